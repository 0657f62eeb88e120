package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// Listen opens bind: "host:port" for TCP or "unix:/path" for a unix
// socket, created with mode. A stale socket file (nobody accepting on it)
// is removed first; a live one is an error, so two servers never fight
// over one path.
func Listen(bind string, mode fs.FileMode) (net.Listener, error) {
	path, isUnix := unixPath(bind)
	if !isUnix {
		ln, err := net.Listen("tcp", bind)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", bind, err)
		}
		return ln, nil
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: exists and is not a socket", bind)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another server is accepting on it", bind)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", bind, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

func unixPath(bind string) (string, bool) {
	const p = "unix:"
	if len(bind) < len(p) || bind[:len(p)] != p {
		return "", false
	}
	rest := bind[len(p):]
	if len(rest) > 2 && rest[:2] == "//" {
		rest = rest[2:]
	}
	return rest, true
}

// RunOptions are the listener-side settings of Run.
type RunOptions struct {
	// TLSCert and TLSKey (PEM files) turn on TLS, and with it HTTP/2.
	TLSCert, TLSKey string
	// ShutdownTimeout bounds the wait for in-flight responses after ctx
	// is cancelled (default 10 minutes: a large NAR on a slow link).
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout (default 10s), IdleTimeout (default 2m) and
	// MaxHeaderBytes (default 64 KiB) limit idle and abusive clients.
	// There is no whole-request read or write timeout (a NAR download or
	// upload may take hours): bodies and responses get progress deadlines
	// instead (Options.ReadProgress, WriteProgress; deadline.go).
	ReadHeaderTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                 int
}

// Run serves on ln until ctx is cancelled, then stops accepting and waits
// (up to ShutdownTimeout) for in-flight requests, so downloads finish.
func (s *Server) Run(ctx context.Context, ln net.Listener, o RunOptions) error {
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 10 * time.Minute
	}
	if o.ReadHeaderTimeout == 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.MaxHeaderBytes == 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	hs.HTTP2 = &http.HTTP2Config{
		// Uploads over HTTP/2 (Nix uses it over TLS) are paced by these
		// flow-control windows, not by TCP's: a stream sends at most its
		// window per round trip. Go's 1 MiB default caps a nix copy to a
		// cache 20 ms away at ~50 MB/s (bench group upload-rtt); 8 MiB a
		// stream and 32 MiB a connection carry ~400 MB/s at that
		// distance. The cost is what a client may send ahead of the
		// handlers: at most 32 MiB per connection, and only authenticated
		// PUTs read their bodies (others are refused before).
		MaxReceiveBufferPerStream:     h2StreamWindow,
		MaxReceiveBufferPerConnection: h2ConnWindow,
	}
	if s.wd > 0 {
		// HTTP/2 (TLS): a connection whose client stops reading is
		// closed after the write progress timeout (the handlers' own
		// watchdogs cover each stream while they write).
		hs.HTTP2.WriteByteTimeout = s.wd
	}
	errc := make(chan error, 1)
	go func() {
		if o.TLSCert != "" {
			errc <- hs.ServeTLS(ln, o.TLSCert, o.TLSKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: waiting for in-flight requests", "timeout", o.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if err != nil {
		s.log.Warn("shutdown timed out, closing remaining connections", "err", err)
		hs.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serr)
	}
	return err
}

// The HTTP/2 receive windows (see Run).
const (
	h2StreamWindow = 8 << 20
	h2ConnWindow   = 32 << 20
)
