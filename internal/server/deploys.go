package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/store"
)

// The deploy history API, on the upload store's store.DeployReports:
//
//	PUT /api/deploys/<id>            a deployer's report (pin or write token)
//	GET /api/deploys?limit=&before=  summaries, newest first, one page
//	GET /api/deploys?node=N&limit=   node N's last results
//	GET /api/deploys/<id>            one report, as it was sent
//	GET /api/fleet?limit=            every node with its last results
//
// Reads are the cache's other reads: open, or with read on a private
// cache. A cache without the history (no upload store) answers 501
// saying so, which the deployer takes for "nothing to send to".

// Default and largest page of a list.
const (
	defaultDeployList = 20
	defaultNodeList   = 10
)

type deployHandler struct {
	s       *Server
	reports store.DeployReports // nil: the cache keeps no history
	// stored counts the PUTs by what became of them: stored, unchanged
	// (a retry of stored bytes) or refused.
	stored *prometheus.CounterVec
}

// deployRoutes installs the history API, or its 501 answers when h is
// nil or its store keeps no history.
func (s *Server) deployRoutes(r *mux.Router, h *putHandler) {
	d := &deployHandler{s: s}
	if h != nil {
		d.reports, _ = h.u.(store.DeployReports)
	}
	get := []string{http.MethodGet, http.MethodHead}
	if d.reports == nil {
		if h != nil {
			s.log.Warn("the upload store keeps no deploy history: /api/deploys answers 501")
		}
		r.HandleFunc("/api/deploys/{id}", d.none).Methods(http.MethodPut).Name("put-deploy")
		r.HandleFunc("/api/deploys", s.guardRead(http.HandlerFunc(d.none)).ServeHTTP).Methods(get...).Name("deploys")
		r.HandleFunc("/api/deploys/{id}", s.guardRead(http.HandlerFunc(d.none)).ServeHTTP).Methods(get...).Name("deploy")
		r.HandleFunc("/api/fleet", s.guardRead(http.HandlerFunc(d.none)).ServeHTTP).Methods(get...).Name("fleet-history")
		return
	}
	d.stored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "concordia_deploy_reports_total",
		Help: "Deploy reports sent to the history, by what became of them: stored, unchanged (the same report again) or refused.",
	}, []string{"result"})
	if err := s.reg.Register(d.stored); err != nil {
		s.log.Warn("deploy history metric not registered", "err", err)
	}
	// The deployer sends its report with the token it pins with: CI's
	// deploy job holds a pin token, not the upload token (the two stay
	// in separate jobs, design.md's trust zones), so pin is enough. An
	// upload token may send one too (a CI that runs both in one job).
	// Neither can change a stored report: they are write-once.
	r.HandleFunc("/api/deploys/{id}", h.guardAny(d.put, auth.Pin, auth.Write)).Methods(http.MethodPut).Name("put-deploy")
	r.HandleFunc("/api/deploys", d.read(d.list)).Methods(get...).Name("deploys")
	r.HandleFunc("/api/deploys/{id}", d.read(d.get)).Methods(get...).Name("deploy")
	r.HandleFunc("/api/fleet", d.read(d.fleet)).Methods(get...).Name("fleet-history")
}

// none is the answer of a cache that keeps no history.
func (d *deployHandler) none(w http.ResponseWriter, r *http.Request) {
	refuseBody(w, r)
	// Not through fail, which words every 5xx generically: this one
	// is the answer, not a failure.
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "this cache keeps no deploy history: it has no upload store ([upload] dir, or [upload.s3] and [upload.database])", http.StatusNotImplemented)
}

// read runs f for readers (the read guard) and answers its error.
func (d *deployHandler) read(f func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.s.authorize(w, r) {
			return
		}
		if err := f(w, r); err != nil {
			d.s.fail(w, r, err)
		}
	}
}

// put stores a report: PUT /api/deploys/<id> with the report as body.
// 201 when stored, 200 when the same report was stored already.
func (d *deployHandler) put(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	max := d.s.limits.MaxDeployReportSize
	err := hostverb.ValidID(id)
	switch {
	case err != nil:
		err = fmt.Errorf("%w: %v", store.ErrInvalid, err)
	case r.ContentLength > max:
		err = d.s.limits.DeployReportTooLarge(fmt.Errorf("deploy report %s of %d bytes", id, r.ContentLength))
	}
	if err != nil {
		refuseBody(w, r)
		d.stored.WithLabelValues("refused").Inc()
		return err
	}
	// One byte past the bound reaches the store, which refuses it
	// naming limits.max_deploy_report_size.
	body := http.MaxBytesReader(w, r.Body, max+1)
	created, err := d.reports.PutDeployReport(r.Context(), id, callerOf(r).name, body)
	if err != nil {
		d.stored.WithLabelValues("refused").Inc()
		return bodyErr(err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !created {
		d.stored.WithLabelValues("unchanged").Inc()
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "deploy report %s stored already\n", id)
		return nil
	}
	d.stored.WithLabelValues("stored").Inc()
	d.s.logger(r).Info("deploy report stored", "id", id, "token", callerOf(r).name)
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "deploy report %s stored\n", id)
	return nil
}

// list answers a page of summaries, or with node= that node's results.
func (d *deployHandler) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if node := q.Get("node"); node != "" {
		limit, err := listLimit(q.Get("limit"), defaultNodeList)
		if err != nil {
			return err
		}
		h, err := d.reports.NodeDeploys(r.Context(), node, limit)
		if err != nil {
			return apiMiss(err)
		}
		return sendJSON(w, h)
	}
	limit, err := listLimit(q.Get("limit"), defaultDeployList)
	if err != nil {
		return err
	}
	page, err := d.reports.DeployReports(r.Context(), limit, q.Get("before"))
	if err != nil {
		return err
	}
	return sendJSON(w, page)
}

// get answers one report as it was sent.
func (d *deployHandler) get(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	if err := hostverb.ValidID(id); err != nil {
		return fmt.Errorf("%w: %v", store.ErrInvalid, err)
	}
	doc, err := d.reports.DeployReport(r.Context(), id)
	if err != nil {
		return apiMiss(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
	_, err = w.Write(doc)
	if err != nil {
		d.s.abort(r, err)
	}
	return nil
}

// fleet answers every node of the history with its last results.
func (d *deployHandler) fleet(w http.ResponseWriter, r *http.Request) error {
	limit, err := listLimit(r.URL.Query().Get("limit"), defaultNodeList)
	if err != nil {
		return err
	}
	nodes, err := d.reports.DeployNodes(r.Context(), limit)
	if err != nil {
		return err
	}
	return sendJSON(w, nodes)
}

// listLimit parses a limit= (1..1000).
func listLimit(v string, def int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, fmt.Errorf("%w: limit %q is not 1..1000", store.ErrInvalid, v)
	}
	return n, nil
}

// apiMiss keeps the text of a history miss: the caller learns the
// report or node is not (or no longer) kept, not a bare "not found".
func apiMiss(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return &apiNotFound{err.Error()}
	}
	return err
}

func sendJSON(w http.ResponseWriter, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(data, '\n'))
	return nil
}
