package server

import "github.com/gorilla/mux"

// RouteSpec is one route of a Server's router.
type RouteSpec struct {
	Name    string
	Path    string // the path template, "" for matcher routes (nar)
	Methods []string
}

// Routes lists every route of s's router, so tests can insist that each
// one is covered (a new route nobody classified fails them).
func Routes(s *Server) []RouteSpec {
	var out []RouteSpec
	_ = s.router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, _ := route.GetPathTemplate()
		methods, _ := route.GetMethods()
		out = append(out, RouteSpec{Name: route.GetName(), Path: tpl, Methods: methods})
		return nil
	})
	return out
}
