package cacheapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/bos55/concordia/internal/store"
)

// The cache's deploy history (the server's /api/deploys): the deployer
// sends each report, `deployer history` and the fleet page read them.

// MaxDeployReport bounds a report read back (the cache's own
// limits.max_deploy_report_size is at most 64 MiB).
const MaxDeployReport = 64 << 20

// PutDeploy sends report (its JSON, whose "id" is id) to the history.
// created is false when the cache had those bytes already (a retry).
// ErrNoAPI: the cache keeps no history (no upload store, or a cache
// older than the history); ErrForbidden: the token has neither pin nor
// write.
func (c *Client) PutDeploy(ctx context.Context, id string, report []byte) (created bool, err error) {
	resp, err := c.send(ctx, http.MethodPut, "/api/deploys/"+url.PathEscape(id), report)
	if err != nil {
		var e *Error
		if errors.Is(err, ErrNotFound) && errors.As(err, &e) {
			// No route: a PUT names nothing that could be missing.
			e.kind = ErrNoAPI
		}
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusCreated, nil
}

// Deploys is one page of the history's summaries, newest first: limit
// of them (0: the cache's default) older than the cursor before (""
// for the newest; a page's Next for the page after it).
func (c *Client) Deploys(ctx context.Context, limit int, before string) (*store.DeployPage, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if before != "" {
		q.Set("before", before)
	}
	var page store.DeployPage
	if err := c.getJSON(ctx, "/api/deploys", q, &page); err != nil {
		return nil, err
	}
	return &page, nil
}

// Deploy is the report id as the deployer sent it: ErrNotFound when the
// history does not (or no longer) keep it.
func (c *Client) Deploy(ctx context.Context, id string) (json.RawMessage, error) {
	data, err := c.do(ctx, http.MethodGet, "/api/deploys/"+url.PathEscape(id), nil, MaxDeployReport)
	if err != nil {
		return nil, apiErr(err)
	}
	if !json.Valid(data) {
		return nil, fmt.Errorf("%w: GET /api/deploys/%s: not JSON", ErrUnavailable, id)
	}
	return data, nil
}

// NodeDeploys is node's last results (limit of them, 0: the cache's
// default), newest first: ErrNotFound when no kept report names it.
func (c *Client) NodeDeploys(ctx context.Context, node string, limit int) (*store.NodeHistory, error) {
	q := url.Values{"node": {node}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var h store.NodeHistory
	if err := c.getJSON(ctx, "/api/deploys", q, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Fleet is every node of the history, by name, with its last results.
func (c *Client) Fleet(ctx context.Context, limit int) ([]store.NodeHistory, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var nodes []store.NodeHistory
	if err := c.getJSON(ctx, "/api/fleet", q, &nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

// getJSON GETs path?q and decodes the answer into v.
func (c *Client) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	data, err := c.do(ctx, http.MethodGet, path, nil, MaxDeployReport)
	if err != nil {
		return apiErr(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: GET %s: %v", ErrUnavailable, path, err)
	}
	return nil
}
