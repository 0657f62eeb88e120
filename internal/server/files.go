package server

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
)

// handleServe serves one file of a store path, as Harmonia's
// /serve/<hash>/<path> does (browse docs, fetch one file). Unlike
// Harmonia it never opens anything on disk: the file is found in the
// path's NAR, so it works for every store and cannot escape the store. A
// symlink is followed inside the same store path; one into another store
// path becomes a redirect to that path's /serve URL; one pointing
// anywhere else is a 404.
func (s *Server) handleServe(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	hash := mux.Vars(r)["hash"]
	if !validHashPart(hash) {
		s.fail(w, r, store.ErrNotFound)
		return
	}
	rel := strings.TrimPrefix(r.URL.Path, "/serve/"+hash)
	ctx := r.Context()
	info, idx, err := s.lookup(ctx, hash)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	st := s.stores[idx]
	listing, err := s.tree(ctx, st, info)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	target, node, redirect := resolveInListing(listing, s.storeDir, strings.Split(rel, "/"))
	switch {
	case redirect != "":
		http.Redirect(w, r, redirect, http.StatusFound)
		return
	case node == nil:
		s.fail(w, r, fmt.Errorf("serve %s%s: %w", hash, rel, store.ErrNotFound))
		return
	}
	h := w.Header()
	// Files from store paths are not this site's pages: no scripts with
	// the cache's origin, no content sniffing.
	h.Set("Content-Security-Policy", "sandbox")
	h.Set("X-Content-Type-Options", "nosniff")
	if node.Type == nar.TypeDirectory {
		if !strings.HasSuffix(r.URL.Path, "/") {
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
			return
		}
		if idx := listing.Lookup(target + "/index.html"); idx != nil && idx.Type == nar.TypeRegular {
			s.serveNARFile(w, r, st, info, target+"/index.html", idx)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		if r.Method == http.MethodHead {
			return
		}
		if err := dirTmpl.Execute(w, dirPage{Title: path.Base(info.StorePath) + target, Entries: node.Entries}); err != nil {
			s.logger(r).Debug("directory page", "err", err)
		}
		return
	}
	s.serveNARFile(w, r, st, info, target, node)
}

// serveNARFile streams one regular file's contents out of the NAR: from
// its offset when the store can start there (the local store), else by
// reading the NAR up to it.
func (s *Server) serveNARFile(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo, target string, node *nar.Node) {
	h := w.Header()
	ct := mime.TypeByExtension(path.Ext(target))
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.FormatInt(node.Size, 10))
	if r.Method == http.MethodHead {
		return
	}
	if node.Size == 0 {
		w.WriteHeader(http.StatusOK)
		return
	}
	if rn, ok := st.(store.RangeNAR); ok && node.NarOffset > 0 {
		fw := &fileWriter{w: w, left: node.Size, bytes: s.metrics.narSource}
		err := rn.NARFrom(r.Context(), info, node.NarOffset, fw)
		switch {
		case errors.Is(err, errors.ErrUnsupported) && !fw.started:
			// Read the NAR up to the file, below.
		case fw.left == 0 && (err == nil || errors.Is(err, errRangeDone)):
			return
		case err == nil:
			err = fmt.Errorf("serve %s%s: NAR ended %d bytes into the file", info.StorePath, target, node.Size-fw.left)
			fallthrough
		default:
			if !fw.started {
				s.fail(w, r, err)
				return
			}
			s.abort(r, err)
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(st.NAR(ctx, info, &countWriter{w: pw, c: s.metrics.narSource})) }()
	defer pr.CloseWithError(errors.New("done"))
	nr := nar.NewReaderOptions(pr, s.limits.NAR())
	want := target
	if want == "" {
		want = "/"
	}
	for {
		hd, err := nr.Next()
		if err != nil {
			s.fail(w, r, fmt.Errorf("serve %s%s: %v", info.StorePath, target, err))
			return
		}
		if hd.Path != want {
			continue
		}
		if hd.Type != nar.TypeRegular || hd.Size != node.Size {
			s.fail(w, r, fmt.Errorf("serve %s%s: path changed between reads", info.StorePath, target))
			return
		}
		w.WriteHeader(http.StatusOK)
		if _, err := io.CopyN(w, nr, hd.Size); err != nil {
			s.abort(r, err)
		}
		return
	}
}

// fileWriter passes the first left bytes of a NAR stream to the response,
// sending the status on the first one, then stops the stream.
type fileWriter struct {
	w       http.ResponseWriter
	left    int64
	started bool
	bytes   prometheus.Counter
}

func (f *fileWriter) Write(p []byte) (int, error) {
	f.bytes.Add(float64(len(p)))
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	if len(p) > 0 {
		if !f.started {
			f.started = true
			f.w.WriteHeader(http.StatusOK)
		}
		n, err := f.w.Write(p)
		f.left -= int64(n)
		if err != nil {
			return 0, err
		}
	}
	if f.left == 0 {
		return 0, errRangeDone
	}
	return len(p), nil
}

// countWriter counts the bytes a store produced into a metric.
type countWriter struct {
	w io.Writer
	c prometheus.Counter
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.c.Add(float64(n))
	return n, err
}

// resolveInListing walks comps from the root of l, following symlinks
// that stay inside the path (at most 16). It returns the resolved path
// ("" for the root, else "/a/b") and node, or a /serve redirect for a
// symlink into another store path, or a nil node when the walk leaves
// the path or finds nothing.
func resolveInListing(l *nar.Listing, storeDir string, comps []string) (string, *nar.Node, string) {
	var cur []string
	hops := 0
	for len(comps) > 0 {
		name := comps[0]
		comps = comps[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "", nil, "" // above the store path's root
			}
			cur = cur[:len(cur)-1]
			continue
		}
		p := "/" + strings.Join(append(cur, name), "/")
		n := l.Lookup(p)
		if n == nil {
			return "", nil, ""
		}
		if n.Type != nar.TypeSymlink {
			cur = append(cur, name)
			continue
		}
		if hops++; hops > 16 {
			return "", nil, ""
		}
		t := n.Target
		if strings.HasPrefix(t, "/") {
			rest, ok := strings.CutPrefix(t, storeDir+"/")
			if !ok {
				return "", nil, "" // outside the store: never followed
			}
			base, sub, _ := strings.Cut(rest, "/")
			if len(base) < 33 || !validHashPart(base[:32]) || base[32] != '-' {
				return "", nil, ""
			}
			tail := strings.Join(append(strings.Split(sub, "/"), comps...), "/")
			return "", nil, "/serve/" + base[:32] + "/" + strings.TrimPrefix(path.Clean("/"+tail), "/")
		}
		comps = append(strings.Split(t, "/"), comps...)
	}
	if len(cur) == 0 {
		return "", l.Root, ""
	}
	p := "/" + strings.Join(cur, "/")
	return p, l.Lookup(p), ""
}

type dirPage struct {
	Title   string
	Entries []nar.Entry
}

// hrefOf makes a relative link to a directory entry: escaped as a path
// and prefixed with ./ so a name like "a:b" is not read as a scheme.
func hrefOf(name string, dir bool) string {
	h := "./" + (&url.URL{Path: name}).EscapedPath()
	if dir {
		h += "/"
	}
	return h
}

var dirTmpl = template.Must(template.New("dir").Funcs(template.FuncMap{"href": hrefOf}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title></head><body>
<h1>Index of {{.Title}}</h1>
<ul>{{range .Entries}}<li><a href="{{href .Name (eq .Node.Type "directory")}}">{{.Name}}{{if eq .Node.Type "directory"}}/{{end}}</a>{{if eq .Node.Type "regular"}} ({{.Node.Size}} bytes){{end}}{{if eq .Node.Type "symlink"}} -&gt; {{.Node.Target}}{{end}}</li>{{end}}</ul>
</body></html>
`))
