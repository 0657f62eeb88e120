package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/config"
)

// TestPendingAndWriterKeys: [upload] pending_max_age and pending_max_size
// (a day and 20G unless set) and [gc] writer_ttl (30 days; "0" is off) and
// hard_max_size (unset: derived from max_size by the store), with the
// values they refuse.
func TestPendingAndWriterKeys(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Upload.PendingMaxAge) != 24*time.Hour || c.Upload.PendingMaxSize != 20<<30 ||
		time.Duration(c.GC.WriterTTL) != 30*24*time.Hour || c.GC.HardMaxSize != 0 {
		t.Fatalf("defaults: %+v %+v", c.Upload, c.GC)
	}
	c, err = config.Parse([]byte("[upload]\npending_max_age = \"3d\"\npending_max_size = \"100G\"\n[gc]\nmax_size = \"10G\"\nwriter_ttl = \"0\"\nhard_max_size = \"12G\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Upload.PendingMaxAge) != 72*time.Hour || c.Upload.PendingMaxSize != 100<<30 || c.GC.WriterTTL != 0 || c.GC.HardMaxSize != 12<<30 {
		t.Fatalf("parsed: %+v %+v", c.Upload, c.GC)
	}
	for doc, key := range map[string]string{
		"[upload]\npending_max_age = \"0\"\n":                "upload.pending_max_age",
		"[upload]\npending_max_size = \"1K\"\n":              "upload.pending_max_size",
		"[gc]\nmax_size = \"10G\"\nhard_max_size = \"5G\"\n": "gc.hard_max_size",
	} {
		if _, err := config.Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: %v, want an error naming %s", doc, err, key)
		}
	}
}

// TestInlineMaxSize: [upload] inline_max_size defaults to 64K, "0" turns
// it off, and past 1M is refused naming the key.
func TestInlineMaxSize(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil || c.Upload.InlineMaxSize != 64<<10 {
		t.Fatalf("default %d, %v", c.Upload.InlineMaxSize, err)
	}
	if c, err = config.Parse([]byte("[upload]\ninline_max_size = \"0\"\n")); err != nil || c.Upload.InlineMaxSize != 0 {
		t.Fatalf("0: %d, %v", c.Upload.InlineMaxSize, err)
	}
	if _, err := config.Parse([]byte("[upload]\ninline_max_size = \"2M\"\n")); err == nil || !strings.Contains(err.Error(), "upload.inline_max_size") {
		t.Fatalf("2M: %v, want an error naming upload.inline_max_size", err)
	}
}

// TestIndexEngine: [upload] index defaults to pebble, takes bbolt, and
// refuses anything else naming the key.
func TestIndexEngine(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil || c.Upload.Index != "pebble" {
		t.Fatalf("default: %q, %v", c.Upload.Index, err)
	}
	if c, err = config.Parse([]byte("[upload]\nindex = \"bbolt\"\n")); err != nil || c.Upload.Index != "bbolt" {
		t.Fatalf("bbolt: %q, %v", c.Upload.Index, err)
	}
	if _, err := config.Parse([]byte("[upload]\nindex = \"sqlite\"\n")); err == nil || !strings.Contains(err.Error(), "upload.index") {
		t.Fatalf("sqlite: %v, want an error naming upload.index", err)
	}
}
