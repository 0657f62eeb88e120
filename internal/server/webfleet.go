package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// What the fleet page lists: each node's last fleetResults results, and
// the newest fleetDeploys deploys.
const (
	fleetResults = 5
	fleetDeploys = 20
)

type fleetData struct {
	// None says why there is no history ("" when there is).
	None    string
	Nodes   []fleetNode
	Deploys []store.DeploySummary
	// More is the cursor of older deploys ("" after the last).
	More string
}

type fleetNode struct {
	store.NodeHistory
	// Current is the last result, whatever it was; nil without one.
	Current *store.NodeDeploy
}

// reports is the deploy history, nil when the cache keeps none.
func (s *Server) reports() store.DeployReports {
	r, _ := s.upload.(store.DeployReports)
	return r
}

func (s *Server) handleFleet(w http.ResponseWriter, r *http.Request) {
	var d fleetData
	h := s.reports()
	if h == nil {
		d.None = "This cache keeps no deploy history: it has no upload store, where the deployer sends its reports."
		s.render(w, r, http.StatusOK, "fleet", "Fleet", "fleet", d)
		return
	}
	before := r.URL.Query().Get("before")
	if before != "" && hostverb.ValidID(before) != nil {
		s.render(w, r, http.StatusBadRequest, "fleet", "Fleet: refused", "fleet", fleetData{None: "before= is not a deploy id."})
		return
	}
	nodes, err := h.DeployNodes(r.Context(), fleetResults)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, n := range nodes {
		fn := fleetNode{NodeHistory: n}
		if len(n.Last) > 0 {
			fn.Current = &n.Last[0]
		}
		d.Nodes = append(d.Nodes, fn)
	}
	pg, err := h.DeployReports(r.Context(), fleetDeploys, before)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d.Deploys, d.More = pg.Reports, pg.Next
	if len(d.Nodes) == 0 && len(d.Deploys) == 0 {
		d.None = "No deploy has been reported yet: `deployer push` sends its report here when the cache is its history (deployer.history or --history)."
	}
	s.render(w, r, http.StatusOK, "fleet", "Fleet", "fleet", d)
}

type deployData struct {
	ID      string
	Summary store.DeploySummary
	Hosts   []store.NodeDeploy
	Raw     string
}

func (s *Server) handleDeployPage(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	h := s.reports()
	if h == nil {
		s.render(w, r, http.StatusNotFound, "fleet", "Fleet", "fleet", fleetData{None: "This cache keeps no deploy history: it has no upload store."})
		return
	}
	if err := hostverb.ValidID(id); err != nil {
		s.fail(w, r, fmt.Errorf("%w: %v", store.ErrInvalid, err))
		return
	}
	doc, err := h.DeployReport(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		s.fail(w, r, &apiNotFound{"deploy report " + id + " is not kept (never sent, or dropped as the oldest)"})
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	sum, hosts, err := upload.ParseDeployReport(id, doc)
	if err != nil {
		// Stored reports were checked when they came: this is damage.
		s.fail(w, r, fmt.Errorf("stored deploy report %s: %v", id, err))
		return
	}
	s.render(w, r, http.StatusOK, "deploy", "Deploy "+id, "fleet", deployData{ID: id, Summary: sum, Hosts: hosts, Raw: "/api/deploys/" + id})
}
