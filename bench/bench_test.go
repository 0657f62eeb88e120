package main

import (
	"slices"
	"strings"
	"testing"
)

// TestInRound: odd rounds measure the systems in reverse, so each pair
// of systems runs in both orders over two rounds; the caller's list is
// left as it was.
func TestInRound(t *testing.T) {
	s := []string{"a", "b", "c"}
	if got := inRound(s, 0); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("round 0: %v", got)
	}
	if got := inRound(s, 1); !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Errorf("round 1: %v", got)
	}
	if !slices.Equal(s, []string{"a", "b", "c"}) {
		t.Errorf("inRound changed its argument: %v", s)
	}
}

// TestClosureExprNamed: closures of different prefixes share no path
// name, so two clients copying them upload disjoint paths.
func TestClosureExprNamed(t *testing.T) {
	a, b := closureExprNamed("x", 3, false), closureExprNamed("y", 3, false)
	for _, want := range []string{`"x-p0"`, `"x-p2"`, `"x-top"`, "p2 = mk \"x-p2\" [ p1 p1 p0 ]"} {
		if !strings.Contains(a, want) {
			t.Errorf("closure x lacks %s:\n%s", want, a)
		}
	}
	if strings.Contains(b, `"x-`) {
		t.Errorf("closure y names a path of x:\n%s", b)
	}
	// wide: no path refers to the one before it (but p1 to p0).
	w := closureExprNamed("w", 7, true)
	for _, want := range []string{"p1 = mk \"w-p1\" [ p0 p0 p0 ]", "p6 = mk \"w-p6\" [ p3 p2 ]", "p5 = mk \"w-p5\" [ p2 p1 ]"} {
		if !strings.Contains(w, want) {
			t.Errorf("wide closure lacks %s:\n%s", want, w)
		}
	}
}
