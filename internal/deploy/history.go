package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/hostverb"
)

// The deploy history: every push (and reboot) sends its report to the
// cache, which keeps the fleet's last reports for the fleet page and
// `deployer history` (the server's /api/deploys).

// ErrNoHistory is SendReport's error when the cache keeps no history (no
// upload store, or a cache older than the history).
var ErrNoHistory = errors.New("the cache keeps no deploy history")

// ReportTimeout bounds sending one report: the deploy is done, a slow
// cache must not hold the CI job.
const ReportTimeout = 30 * time.Second

// SendReport sends report to the history of the cache c names, under id
// (the report's own "id"). report is anything whose JSON has the shape of
// a report (Report's: id, start, hosts with node and result, failed), so
// the reports of other commands go the same way. A report stored already
// with the same bytes (a CI retry) is no error.
func SendReport(ctx context.Context, c *cacheapi.Client, id string, report any) error {
	if err := hostverb.ValidID(id); err != nil {
		return err
	}
	data, err := json.Marshal(report)
	if err != nil {
		return fmt.Errorf("deploy report %s: %w", id, err)
	}
	if c.HTTP == nil {
		cc := *c
		cc.HTTP = &http.Client{Timeout: ReportTimeout}
		c = &cc
	}
	ctx, cancel := context.WithTimeout(ctx, ReportTimeout)
	defer cancel()
	_, err = c.PutDeploy(ctx, id, data)
	if errors.Is(err, cacheapi.ErrUnavailable) && ctx.Err() == nil {
		// Once more: the same bytes are taken again when the first
		// try landed after all.
		select {
		case <-time.After(time.Second):
			_, err = c.PutDeploy(ctx, id, data)
		case <-ctx.Done():
		}
	}
	switch {
	case errors.Is(err, cacheapi.ErrNoAPI):
		return fmt.Errorf("%w: %w", ErrNoHistory, err)
	case errors.Is(err, cacheapi.ErrAuth), errors.Is(err, cacheapi.ErrForbidden):
		return fmt.Errorf("%w (sending the deploy report needs a cache token with pin or write: the one the push pins with)", err)
	case err != nil:
		return fmt.Errorf("deploy report %s: %w", id, err)
	}
	return nil
}
