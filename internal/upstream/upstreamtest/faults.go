package upstreamtest

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Fault is a way of misbehaving. The narinfo faults (WrongSignature,
// Unsigned, WrongPath) and the NAR one (WrongNarHash) change what is
// sent; the others change how, on either document.
type Fault int

const (
	// OK answers correctly (no fault).
	OK Fault = iota
	// WrongSignature signs the narinfo with another key of the same
	// name: it looks signed by the trusted key, and is not.
	WrongSignature
	// Unsigned sends the narinfo without any Sig line.
	Unsigned
	// WrongPath sends, correctly signed, the narinfo of another store
	// path (another hash part) under the name asked for.
	WrongPath
	// WrongNarHash sends NAR bytes other than the narinfo's (one byte
	// changed, the same length).
	WrongNarHash
	// Truncated promises the whole body in Content-Length, sends half
	// and closes the connection.
	Truncated
	// Hang never answers, until the client gives up or the test ends.
	Hang
	// SlowBody sends the headers and a first chunk, then stalls until
	// the client gives up or the test ends.
	SlowBody
	// Status500, Status503 and Status429 answer with that status.
	Status500
	Status503
	Status429
	// NotFound answers 404 as if the path were not there.
	NotFound
	// Malformed sends a narinfo that does not parse.
	Malformed
	// Oversize sends the narinfo padded with unknown keys to 2 MiB.
	Oversize
)

// narinfoFor renders p's narinfo as f wants it.
func narinfoFor(p *Path, f Fault) string {
	ni := *p.NarInfo
	ni.Sigs = slices.Clone(ni.Sigs)
	switch f {
	case WrongSignature:
		other, _, err := narinfo.GenerateKey(p.Key.Name())
		if err != nil {
			panic(err) // crypto/rand failing
		}
		ni.Sigs = nil
		ni.Sign(other)
	case Unsigned:
		ni.Sigs = nil
	case WrongPath:
		_, _, name, _ := narinfo.ParseStorePath(ni.StorePath)
		h := []byte(p.HashPart())
		if h[0] == '0' {
			h[0] = '1'
		} else {
			h[0] = '0'
		}
		ni.StorePath = StoreDir + "/" + string(h) + "-" + name
		ni.Sigs = nil
		ni.Sign(p.Key)
	case Malformed:
		return "StorePath: " + ni.StorePath + "\nthis is not a narinfo\n"
	case Oversize:
		pad := strings.Repeat("X-Padding: "+strings.Repeat("x", 1000)+"\n", 2<<10)
		return ni.String() + pad
	}
	return ni.String()
}

// alteredFile is p's file with one byte changed.
func alteredFile(p *Path) []byte {
	b := slices.Clone(p.File)
	b[len(b)/2] ^= 0x01
	return b
}

// answer sends body (of type ctype) the way f says.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, f Fault, ctype string, body []byte) {
	switch f {
	case Hang:
		s.wait(r)
		return
	case Status500, Status503, Status429, NotFound:
		code := map[Fault]int{Status500: 500, Status503: 503, Status429: 429, NotFound: 404}[f]
		if f == Status429 {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, http.StatusText(code), code)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	switch f {
	case Truncated:
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // closes the connection, quietly
	case SlowBody:
		w.Write(body[:min(len(body)/2, 512)])
		w.(http.Flusher).Flush()
		s.wait(r)
		return
	}
	w.Write(body)
}

// wait blocks until the client goes away or the test ends (with a
// bound, so a forgotten client cannot keep the server from closing).
func (s *Server) wait(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-s.done:
	case <-time.After(time.Minute):
	}
}
