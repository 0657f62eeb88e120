package nixos

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// The PromQL words that are never metric names: aggregations, functions,
// binary and set operators, modifiers. A word followed by "(" that is not
// here is refused, so a misspelt function fails the test instead of
// passing as a metric name.
var (
	promqlFuncs = words(`sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
		abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week day_of_year
		days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
		histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join label_replace
		ln log2 log10 minute month predict_linear rate resets round scalar sgn sort sort_desc sort_by_label
		sort_by_label_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time sum_over_time
		count_over_time quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time
		acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi`)
	// promqlGrouping take a parenthesized list of label names.
	promqlGrouping = words(`by without on ignoring group_left group_right`)
	promqlWords    = words(`and or unless bool offset atan2 inf nan`)
)

func words(s string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(s) {
		m[w] = true
	}
	return m
}

var errPromQL = errors.New("promql")

// metricNames lists the metric names a PromQL expression selects: the
// identifiers that are not functions, operators or label names (inside
// {...} matchers and by/on/... lists), skipping strings, ranges ([5m],
// [$__rate_interval]) and numbers. Grafana's $variables may stand in
// strings and ranges. A selector by {__name__=...} is refused: its name
// could not be checked.
func metricNames(expr string) ([]string, error) {
	seen := map[string]bool{}
	i := 0
	skipSpace := func() {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
	}
	// skipTo moves past the close that matches the open at i, skipping
	// strings inside.
	skipTo := func(open, close byte) error {
		depth := 0
		for ; i < len(expr); i++ {
			switch c := expr[i]; {
			case c == '"' || c == '\'' || c == '`':
				end, err := skipString(expr, i)
				if err != nil {
					return err
				}
				i = end - 1
			case c == open:
				depth++
			case c == close:
				depth--
				if depth == 0 {
					i++
					return nil
				}
			}
		}
		return fmt.Errorf("%w: unclosed %c in %q", errPromQL, open, expr)
	}
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '{':
			start := i
			if err := skipTo('{', '}'); err != nil {
				return nil, err
			}
			if strings.Contains(expr[start:i], "__name__") {
				return nil, fmt.Errorf("%w: selector by __name__ in %q", errPromQL, expr)
			}
		case c == '[':
			if err := skipTo('[', ']'); err != nil {
				return nil, err
			}
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(expr) && expr[i+1] >= '0' && expr[i+1] <= '9':
			// A number or a duration (5m, 1e3, 0x1f, 1.5).
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case c == '$':
			// A Grafana variable outside a string ($__interval in an
			// offset, say): not a metric.
			i++
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			w := expr[start:i]
			skipSpace()
			next := byte(0)
			if i < len(expr) {
				next = expr[i]
			}
			switch {
			case promqlGrouping[w]:
				if next == '(' {
					if err := skipTo('(', ')'); err != nil {
						return nil, err
					}
				} else if w != "group_left" && w != "group_right" {
					return nil, fmt.Errorf("%w: %s without a label list in %q", errPromQL, w, expr)
				}
			case promqlFuncs[w], promqlWords[w]:
			case next == '(':
				return nil, fmt.Errorf("%w: unknown function %s in %q", errPromQL, w, expr)
			default:
				seen[w] = true
			}
		default:
			i++ // operators, parentheses, commas
		}
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// skipString returns the index just past the string literal at i.
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			if q != '`' {
				j++
			}
		case q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%w: unterminated string in %q", errPromQL, s)
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (route, le) (rate(http_x_bucket{instance=~"$cache", code=~"5.."}[$__rate_interval]))`, []string{"http_x_bucket"}},
		{`sum(rate(a{route="narinfo"}[5m])) / sum(rate(b[5m]))`, []string{"a", "b"}},
		{`histogram_quantile(0.99, sum without (pod) (rate(h_bucket[1m])))`, []string{"h_bucket"}},
		{`a > bool b`, []string{"a", "b"}},
		{`count(x == 1) or vector(0)`, []string{"x"}},
		{`time() - ts > 6 * 3600`, []string{"ts"}},
		{`a and on(instance) group_left(mode) b unless ignoring(job) c`, []string{"a", "b", "c"}},
		{`x * on(instance) group_left y`, []string{"x", "y"}},
		{`last_over_time(m[1d]) unless m offset 5m`, []string{"m"}},
		{`label_replace(m, "dst", "metric_in_string", "src", "(.*)")`, []string{"m"}},
		{`m{l="a \" } b"}`, []string{"m"}},
		{`m{l='single } quote'} + n`, []string{"m", "n"}},
		{"topk(5, m)\n# comment names_no_metric\n", []string{"m"}},
		{`1.1 * (m > 0) + .5e3 + 0x1f`, []string{"m"}},
		{`rate(ns:recorded:rate5m[5m])`, []string{"ns:recorded:rate5m"}},
		{`max_over_time(m[1h:5m])`, []string{"m"}},
	} {
		got, err := metricNames(tc.expr)
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %v, want %v", tc.expr, got, tc.want)
		}
	}
	for _, bad := range []string{
		`rat(m[5m])`,                // misspelt function
		`{__name__="m"}`,            // name not checkable
		`sum by route (m)`,          // grouping without a list
		`m{l="unterminated}`,        // unterminated string
		`rate(m[5m)`,                // unclosed range
		`m{l="a"`,                   // unclosed matcher
		`sum(m) by (instance`,       // unclosed label list
		`histogram_quantil(0.9, m)`, // misspelt function
	} {
		if got, err := metricNames(bad); !errors.Is(err, errPromQL) {
			t.Errorf("%q: got %v, %v; want an error", bad, got, err)
		}
	}
}
