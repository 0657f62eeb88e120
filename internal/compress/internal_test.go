package compress

import "testing"

func TestLevel(t *testing.T) {
	for _, tc := range []struct {
		in   int
		want string
	}{{-5, "fastest"}, {0, "fastest"}, {1, "fastest"}, {3, "default"}, {7, "better"}, {19, "best"}} {
		if got := Level(tc.in).String(); got != tc.want {
			t.Errorf("Level(%d) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
