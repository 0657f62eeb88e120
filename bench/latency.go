package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// oneWayDelay is what the delay proxy adds in each direction: a 20 ms
// round trip, a CI runner in another region than its cache.
const oneWayDelay = 10 * time.Millisecond

// benchUploadRTT: the big path uploaded with nix copy --to over plain http
// (HTTP/1.1, one TCP connection whose window the kernel grows) and over
// https (HTTP/2, whose flow-control windows the server sets), both through
// a proxy that adds a 20 ms round trip. HTTP/2's windows are per stream and
// per connection: a window of W bytes caps a stream at W per round trip.
// With --vs-bin a second cache binary is measured the same way, runs
// interleaved.
func (b *bench) benchUploadRTT(ctx context.Context) error {
	cert, key, err := selfSigned(b.work)
	if err != nil {
		return err
	}
	bins := b.cacheBins()
	for i := 0; i < b.o.runs; i++ {
		for _, bin := range bins {
			for _, tls := range []bool{false, true} {
				d, err := b.uploadThroughDelay(ctx, bin.bin, tls, cert, key)
				if err != nil {
					return err
				}
				proto := "http (HTTP/1.1)"
				if tls {
					proto = "https (HTTP/2)"
				}
				b.rep.add("upload", bin.name+" "+proto+", 20 ms RTT", "seconds, big path", d.Seconds())
			}
		}
	}
	return nil
}

// uploadThroughDelay starts a fresh upload cache from bin (TLS or not),
// puts the delay proxy in front and times one nix copy --to of the big
// path.
func (b *bench) uploadThroughDelay(ctx context.Context, bin string, tls bool, cert, key string) (time.Duration, error) {
	extra := ""
	if tls {
		extra = fmt.Sprintf("tls_cert_path = %q\ntls_key_path = %q\n", cert, key)
	}
	up, err := b.startUploadCacheWith(ctx, bin, extra)
	if err != nil {
		return 0, err
	}
	defer func() {
		b.procs.stop(up.srv.cmd)
		_ = os.RemoveAll(up.state)
	}()
	target := strings.TrimPrefix(up.srv.base, "http://")
	proxy, err := startDelayProxy(ctx, target, oneWayDelay)
	if err != nil {
		return 0, err
	}
	defer proxy.Close()
	scheme := "http"
	if tls {
		scheme = "https"
	}
	url := fmt.Sprintf("%s://%s?compression=none", scheme, proxy.Addr())
	return b.timeCmd(ctx, []string{"NIX_SSL_CERT_FILE=" + cert}, "nix", "--extra-experimental-features", "nix-command",
		"copy", "--to", url, "--option", "netrc-file", up.netrc, b.w.big.Path)
}

// selfSigned writes a certificate for 127.0.0.1 (and its key) that the
// client is told to trust with NIX_SSL_CERT_FILE.
func selfSigned(dir string) (certPath, keyPath string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, "tls-cert.pem"), filepath.Join(dir, "tls-key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// delayProxy forwards TCP connections to a target, holding every chunk
// for a fixed delay in each direction: latency without a bandwidth limit
// (this machine's kernel has no netem).
type delayProxy struct {
	ln    net.Listener
	delay time.Duration
	wg    sync.WaitGroup
}

func startDelayProxy(ctx context.Context, target string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, delay: delay}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go p.pipe(c, t)
			go p.pipe(t, c)
		}
	}()
	return p, nil
}

func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func (p *delayProxy) Close() error {
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// pipe copies src to dst, each chunk written delay after it was read.
// The queue bounds what is in flight (as a link's buffer would).
func (p *delayProxy) pipe(src, dst net.Conn) {
	type chunk struct {
		b   []byte
		due time.Time
	}
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{buf[:n], time.Now().Add(p.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	for range q { // drain so the reader can finish
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
	src.Close()
	_, _ = io.Copy(io.Discard, src)
}
