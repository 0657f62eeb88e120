package server_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestUploadedLogEncodings: an uploaded log (plain, or zstd-encoded as Nix
// 2.32+ may send it) is served byte-exact as the client asks: the stored
// zstd file as it is to a client that accepts zstd (with its length),
// decoded to one that does not (Nix 2.8 sends no Accept-Encoding) or asks
// only for others; HEAD sends the headers alone.
func TestUploadedLogEncodings(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	plainDrv := hashOf("enc-plain") + "-plain.drv"
	packedDrv := hashOf("enc-packed") + "-packed.drv"
	text := strings.Repeat("building: make[2]: Entering directory '/build/src'\n", 60_000)
	if code, msg := e.do(t, "PUT", "/log/"+plainDrv, e.writeTok, []byte(text)); code != 200 {
		t.Fatalf("PUT log: %d %s", code, msg)
	}
	if code, msg := e.putEncoded(t, "/log/"+packedDrv, []byte(text)); code != 200 {
		t.Fatalf("PUT zstd-encoded log: %d %s", code, msg)
	}
	get := func(method, drv, ae string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, e.url+"/log/"+drv, nil)
		if ae != "" {
			req.Header.Set("Accept-Encoding", ae)
		}
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	for _, drv := range []string{plainDrv, packedDrv} {
		for _, ae := range []string{"", "gzip, deflate, bzip2", "identity"} {
			resp, body := get("GET", drv, ae)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || string(body) != text {
				t.Fatalf("GET %s, Accept-Encoding %q: %d %v, %d bytes", drv, ae, resp.StatusCode, resp.Header, len(body))
			}
		}
		resp, body := get("GET", drv, "zstd, br, gzip, deflate, bzip2, xz")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "zstd" || resp.ContentLength != int64(len(body)) || len(body) > len(text)/20 {
			t.Fatalf("GET %s as zstd: %d %v, %d bytes", drv, resp.StatusCode, resp.Header, len(body))
		}
		dec, _ := zstd.NewReader(bytes.NewReader(body))
		if got, err := io.ReadAll(dec); err != nil || string(got) != text {
			t.Fatalf("the zstd answer does not decode to the log: %v", err)
		}
		for _, ae := range []string{"", "zstd"} {
			resp, body = get("HEAD", drv, ae)
			if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Vary") != "Accept-Encoding" {
				t.Fatalf("HEAD %s (%q): %d %v", drv, ae, resp.StatusCode, resp.Header)
			}
		}
	}
	if resp, _ := get("GET", hashOf("enc-none")+"-none.drv", "zstd"); resp.StatusCode != 404 {
		t.Fatalf("missing log as zstd: %d", resp.StatusCode)
	}
}
