package main

import (
	"testing"

	"github.com/bos55/concordia/internal/sharedtest"
)

// TestMain stops the PostgreSQL and MinIO servers the replica tests start.
func TestMain(m *testing.M) { sharedtest.Main(m) }
