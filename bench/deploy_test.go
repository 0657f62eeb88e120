package main

import "testing"

func TestParseScale(t *testing.T) {
	out := `=== RUN   TestE2EScale
    scale_e2e_test.go:75: scale: hosts=10 run=1 wall_s=30.077 self_cpu_s=0.310 child_cpu_s=4.416 master_cpu_s=1.250 peak_rss_kib=16644 maxrss_kib=54120 host_cpu_s=9.09 machine_cpu_s=60.14 logins_per_host=2.00 steps=closure:72,fetch:6106,activate:14961
    scale_e2e_test.go:75: scale: hosts=1 run=1 wall_s=12.545 self_cpu_s=0.090 child_cpu_s=0.365 master_cpu_s=0.100 peak_rss_kib=14324 maxrss_kib=36200 host_cpu_s=0.84 machine_cpu_s=25.05 logins_per_host=2.00 steps=closure:5,fetch:1100
--- PASS: TestE2EScale (69.77s)
`
	got, err := parseScale(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].hosts != 1 || got[1].hosts != 10 {
		t.Fatalf("pushes %+v, want 1 host then 10", got)
	}
	p := got[1]
	if p.wall != 30.077 || p.selfCPU != 0.31 || p.childCPU != 4.416 || p.masterCPU != 1.25 || p.peakRSS != 16644 ||
		p.hostCPU != 9.09 || p.machineCPU != 60.14 || p.logins != 2 || len(p.steps) != 3 || p.steps[2] != (step{"activate", 14961}) {
		t.Fatalf("push %+v", p)
	}
	for _, bad := range []string{"", "no figures here\n", "scale: hosts=x wall_s=1\n", "scale: hosts=3 wall_s=\n"} {
		if _, err := parseScale(bad); err == nil {
			t.Errorf("parseScale(%q): want an error", bad)
		}
	}
}
