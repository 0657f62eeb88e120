package upstream

import "net/http"

// Check runs the checks of a narinfo body from the first upstream, for
// the fuzz test.
func (s *Set) Check(hashPart string, body []byte) (*Answer, error) {
	return s.check(s.ups[0], hashPart, body)
}

// HTTPClient is the client the upstream's requests go through.
func (u *Upstream) HTTPClient() *http.Client { return u.client }
