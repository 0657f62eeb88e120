package hostverb_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

const (
	self = "/opt/concordia/bin/deployer"
	p    = "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a"
	q    = "/nix/store/1c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-b"
)

func TestParseCommandAllowed(t *testing.T) {
	tests := []struct {
		cmd  string
		form int
		want hostverb.Request
	}{
		{"deployer fetch " + p, 2, hostverb.Request{Verb: hostverb.VerbFetch, Paths: []string{p}}},
		{self + " fetch " + p + " " + q, 2, hostverb.Request{Verb: hostverb.VerbFetch, Paths: []string{p, q}}},
		{"/nix/store/9c6kzph7l0dcbfmjap64f0czdafn3b7x-concordia-2/bin/deployer version", 2, hostverb.Request{Verb: hostverb.VerbVersion}},
		{"deployer  status --local --json", 2, hostverb.Request{Verb: hostverb.VerbStatus}},
		{"deployer status", 2, hostverb.Request{Verb: hostverb.VerbStatus}},
		{"sudo -n " + self + " activate --mode switch --id d-1 --confirm-timeout 30s " + p, 1,
			hostverb.Request{Verb: hostverb.VerbActivate, Mode: hostverb.Switch, ID: "d-1", ConfirmTimeout: 30 * time.Second,
				MagicRollback: true, AutoRollback: true, KernelChange: "switch", Path: p}},
		{"deployer activate --mode test --id d-1 --confirm-timeout 1m30s --magic-rollback=false --auto-rollback=true --kernel-change boot " + p, 2,
			hostverb.Request{Verb: hostverb.VerbActivate, Mode: hostverb.Test, ID: "d-1", ConfirmTimeout: 90 * time.Second,
				AutoRollback: true, KernelChange: "boot", Path: p}},
		{"sudo -n " + self + " activate --id d-1 --magic-rollback=false " + p, 1,
			hostverb.Request{Verb: hostverb.VerbActivate, Mode: hostverb.Switch, ID: "d-1", ConfirmTimeout: 30 * time.Second,
				AutoRollback: true, KernelChange: "switch", Path: p}},
		{"sudo -n deployer confirm --id d-1", 1, hostverb.Request{Verb: hostverb.VerbConfirm, ID: "d-1"}},
		{"deployer confirm --id d-1 --reject", 2, hostverb.Request{Verb: hostverb.VerbConfirm, ID: "d-1", Reject: true}},
		{"sudo -n " + self + " wait --id d-1 --timeout 5m", 1, hostverb.Request{Verb: hostverb.VerbWait, ID: "d-1", Timeout: 5 * time.Minute}},
		{"deployer wait --id d-1", 2, hostverb.Request{Verb: hostverb.VerbWait, ID: "d-1", Timeout: 10 * time.Minute}},
		{"sudo -n " + self + " status --local", 1, hostverb.Request{Verb: hostverb.VerbStatus}},
		{"sudo -n " + self + " rollback --local", 1, hostverb.Request{Verb: hostverb.VerbRollback, ID: "rollback"}},
		{"deployer rollback --id rb-7", 2, hostverb.Request{Verb: hostverb.VerbRollback, ID: "rb-7"}},
		{"deployer health --id d-1 --timeout 15s", 2, hostverb.Request{Verb: hostverb.VerbHealth, ID: "d-1", Timeout: 15 * time.Second}},
		{"deployer health --id d-1 --booted", 2, hostverb.Request{Verb: hostverb.VerbHealth, ID: "d-1", Timeout: 30 * time.Second, Booted: true}},
		{"deployer reboot --id d-1", 2, hostverb.Request{Verb: hostverb.VerbReboot, ID: "d-1"}},
		{"sudo -n deployer reboot --id d-1", 1, hostverb.Request{Verb: hostverb.VerbReboot, ID: "d-1"}},
		{"deployer rollback --id d-1 --boot --generation 7", 2, hostverb.Request{Verb: hostverb.VerbRollback, ID: "d-1", Boot: true, Generation: 7}},
		{"deployer rollback --boot --generation 999999999", 2, hostverb.Request{Verb: hostverb.VerbRollback, ID: "rollback", Boot: true, Generation: 999999999}},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			got, form, err := hostverb.ParseCommand(tc.cmd)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if form != tc.form || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v (form %d), want %+v (form %d)", got, form, tc.want, tc.form)
			}
		})
	}
}

// Every refusal wraps ErrRefused, so the gate answers 126, and says why.
func TestParseCommandRefused(t *testing.T) {
	refused := []string{
		"",
		"   ",
		"sh",
		"/bin/sh -c id",
		"bash",
		"deployer",
		"deployer push --on all",
		"deployer gate",
		"deployer agent --listen /tmp/x",
		"deployer host status",
		"deployer watchdog --id x --state-dir /tmp --lock-fd 3",
		"deployer activate --mode switch " + p, // no --id
		"sudo -n /bin/sh",
		"sudo /bin/sh",
		"sudo " + self + " activate --id d " + p, // without -n
		"sudo -n " + self + " fetch " + p,        // user verbs run without sudo
		"sudo -n " + self + " version",
		"sudo -n " + self + " gate",
		"sudo -n -u root " + self + " activate --id d " + p,
		"sudo -n /tmp/evil/sh activate --id d " + p,
		"sudo -n deployer/../sh activate --id d " + p,
		"/tmp/../bin/deployer status",
		"deployer-evil status",
		"deployer fetch " + p + "; sh",
		"deployer fetch " + p + " && id",
		"deployer fetch " + p + " | sh",
		"deployer fetch $(id)",
		"deployer fetch `id`",
		"deployer fetch '" + p + "'",
		"deployer fetch \"" + p + "\"",
		"deployer fetch /nix/store/*",
		"deployer fetch /nix/store/?",
		"deployer fetch " + p + " > /etc/passwd",
		"deployer fetch < /etc/shadow",
		"deployer fetch " + p + "\nsh",
		"deployer fetch \\" + p,
		"deployer fetch ~root",
		"deployer\tfetch " + p,
		"deployer fetch " + p + " &",
		"deployer fetch {a,b}",
		"deployer fetch a#b",
		"deployer fetch !1",
		"deployer fetch %s",
		"deployer fetch",
		"deployer fetch /etc/passwd",
		"deployer fetch " + p + "/bin/sh",
		"deployer fetch /nix/store/../../etc/shadow",
		"deployer fetch /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", // e is not nix32
		"deployer fetch /nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-..",
		"deployer fetch /nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-.-x",
		"deployer fetch /nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-..-x",
		"deployer fetch --state-dir /tmp " + p,
		"deployer fetch -- " + p,
		"deployer fetch " + strings.Repeat(p+" ", 65),
		"deployer status --local --local=false --file /dev/stdin",
		"deployer status --file /dev/stdin",
		"deployer status --flake /tmp/evil",
		"deployer status --state-dir /tmp/x",
		"deployer status --local --local",
		"deployer status --json=yes",
		"deployer status " + p,
		"deployer rollback --file /dev/stdin web1",
		"deployer rollback --local=false",
		"deployer rollback --id d-1 --id d-2",
		"deployer rollback --state-dir /tmp/x",
		"deployer rollback --flake /tmp/evil",
		"deployer rollback web1",
		"deployer activate --id d-1 --state-dir /tmp/x " + p,
		"deployer activate --id d-1 --mode=switch " + p,
		"deployer activate --id=d-1 " + p,
		"deployer activate -id d-1 " + p,
		"deployer activate --id d-1 --mode reboot " + p,
		"deployer activate --id d-1 --mode switch --mode test " + p,
		"deployer activate --id ../../etc " + p,
		"deployer activate --id -d " + p,
		"deployer activate --id " + strings.Repeat("a", 65) + " " + p,
		"deployer activate --id d-1 --confirm-timeout 0s " + p,
		"deployer activate --id d-1 --confirm-timeout 25h " + p,
		"deployer activate --id d-1 --confirm-timeout 1e9s " + p,
		"deployer activate --id d-1 --confirm-timeout -5s " + p,
		"deployer activate --id d-1 --confirm-timeout " + strings.Repeat("9", 40) + "s " + p,
		"deployer activate --id d-1 --kernel-change yes " + p,
		"deployer activate --id d-1 --magic-rollback=maybe " + p,
		"deployer activate --id d-1 --magic-rollback false " + p,
		"deployer activate --id d-1 " + p + " " + q,
		"deployer activate --id d-1 " + p + " --mode test",
		"deployer activate --id d-1 /tmp/evil-system",
		"deployer activate --id d-1 " + p + "/",
		"deployer activate --id d-1 /nix/store/" + strings.Repeat("a", 300),
		"deployer activate --id d-1 --id d-2 " + p,
		"deployer activate --id d-1 --reject " + p,
		"deployer confirm",
		"deployer confirm --id d-1 --reject=yes",
		"deployer confirm --id d-1 --timeout 5s",
		"deployer wait --id d-1 --timeout 0s",
		"deployer wait --id d-1 --timeout 48h",
		"deployer health",
		"deployer health --id d-1 --timeout 2h",
		"deployer health --id d-1 --command id",
		"deployer version --json",
		// Contract 4: reboot takes an id and nothing else; a boot default
		// goes to a generation number, never a path or anything else.
		"deployer reboot",
		"deployer reboot --id ../x",
		"deployer reboot --id d-1 " + p,
		"deployer reboot --id d-1 --now",
		"deployer reboot --id d-1 --generation 3",
		"deployer reboot --id d-1 --boot",
		"deployer rollback --boot",
		"deployer rollback --generation 3",
		"deployer rollback --boot --generation 0",
		"deployer rollback --boot --generation -1",
		"deployer rollback --boot --generation 03",
		"deployer rollback --boot --generation +3",
		"deployer rollback --boot --generation 3.0",
		"deployer rollback --boot --generation 0x10",
		"deployer rollback --boot --generation 1000000000",
		"deployer rollback --boot --generation 99999999999999999999",
		"deployer rollback --boot --generation " + p,
		"deployer rollback --boot --generation /nix/var/nix/profiles/system-3-link",
		"deployer rollback --boot --generation 3 --generation 4",
		"deployer rollback --boot --generation=3",
		"deployer rollback --boot=yes --generation 3",
		"deployer rollback --boot --generation 3 " + p,
		"deployer rollback --boot --generation 3 --profile /nix/var/nix/profiles/per-user/root/x",
		"deployer health --id d-1 --booted=yes",
		"deployer health --id d-1 --booted " + p,
		"deployer status --booted",
		"deployer activate --id d-1 --boot " + p,
		"deployer " + strings.Repeat("x", hostverb.MaxLine),
	}
	for _, cmd := range refused {
		t.Run(cmd, func(t *testing.T) {
			got, _, err := hostverb.ParseCommand(cmd)
			if !errors.Is(err, hostverb.ErrRefused) {
				t.Fatalf("allowed as %+v (err %v)", got, err)
			}
			if hostverb.ExitCode(err) != hostverb.ExitRefused || strings.Contains(err.Error(), "\n") {
				t.Fatalf("refusal %q: exit %d, want %d and one line", err, hostverb.ExitCode(err), hostverb.ExitRefused)
			}
		})
	}
}

// The program word is never run, so a push side naming a newer deployer
// store path than the host has (every upgrade) still reaches the host.
func TestParseCommandAnyDeployerPath(t *testing.T) {
	for _, prog := range []string{"deployer", self, "/run/current-system/sw/bin/deployer",
		"/nix/store/9c6kzph7l0dcbfmjap64f0czdafn3b7x-concordia-99/bin/deployer"} {
		if _, _, err := hostverb.ParseCommand(prog + " status"); err != nil {
			t.Errorf("%s: %v", prog, err)
		}
	}
}

// What the push side encodes, a gate of the same contract parses back to
// the same request, in every version that has the verb.
func TestEncodeRoundTrip(t *testing.T) {
	reqs := []hostverb.Request{
		{Verb: hostverb.VerbFetch, Paths: []string{p, q}},
		{Verb: hostverb.VerbVersion},
		{Verb: hostverb.VerbActivate, Mode: hostverb.Boot, ID: "d-1", ConfirmTimeout: 90 * time.Second, AutoRollback: true, KernelChange: "boot", Path: p},
		{Verb: hostverb.VerbActivate, Mode: hostverb.Switch, ID: "d-2", ConfirmTimeout: 1500 * time.Millisecond, MagicRollback: true, KernelChange: "refuse", Path: p},
		{Verb: hostverb.VerbActivate, Mode: hostverb.Test, ID: "d-3", ConfirmTimeout: time.Minute, KernelChange: "switch", NoCheck: true, Install: true, Path: p},
		{Verb: hostverb.VerbConfirm, ID: "d-1"},
		{Verb: hostverb.VerbConfirm, ID: "d-1", Reject: true},
		{Verb: hostverb.VerbWait, ID: "d-1", Timeout: 73 * time.Second},
		{Verb: hostverb.VerbStatus},
		{Verb: hostverb.VerbRollback, ID: "rb-1"},
		{Verb: hostverb.VerbHealth, ID: "d-1", Timeout: time.Minute},
		{Verb: hostverb.VerbHealth, ID: "d-1", Timeout: time.Minute, Booted: true},
		{Verb: hostverb.VerbReboot, ID: "d-1"},
		{Verb: hostverb.VerbRollback, ID: "rb-1", Boot: true, Generation: 12},
	}
	for _, r := range reqs {
		for v := hostverb.MinContract; v <= hostverb.Contract; v++ {
			w, err := r.Encode(v)
			if (r.NoCheck || r.Install) && v < 3 {
				if !errors.Is(err, hostverb.ErrUnsupported) {
					t.Errorf("v%d %+v: %v, want unsupported", v, r, err)
				}
				continue
			}
			if (r.Verb == hostverb.VerbReboot || r.Boot || r.Booted) && v < 4 {
				if !errors.Is(err, hostverb.ErrUnsupported) {
					t.Errorf("v%d %+v: %v, want unsupported", v, r, err)
				}
				continue
			}
			if r.Verb == hostverb.VerbHealth && v < 2 {
				if !errors.Is(err, hostverb.ErrUnsupported) {
					t.Errorf("health in contract %d: %v, want unsupported", v, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%+v v%d: %v", r, v, err)
			}
			got, form, err := hostverb.ParseCommand(strings.Join(w, " "))
			if err != nil {
				t.Fatalf("%q: %v", w, err)
			}
			if got.KernelChange == hostverb.KernelReport {
				got.KernelChange = hostverb.KernelRefuse // the same policy, by its contract 1-2 name
			}
			if !reflect.DeepEqual(got, r) || (r.Verb.Root() && r.Verb != hostverb.VerbStatus && form != min(v, 2)) {
				t.Errorf("v%d %q parsed to %+v (form %d), want %+v", v, w, got, form, r)
			}
		}
	}
}

func TestValidateRefusesStrayFields(t *testing.T) {
	bad := []hostverb.Request{
		{Verb: hostverb.VerbStatus, Path: p},
		{Verb: hostverb.VerbStatus, ID: "x"},
		{Verb: hostverb.VerbFetch, Paths: []string{p}, Mode: hostverb.Switch},
		{Verb: hostverb.VerbConfirm, ID: "d", Timeout: time.Second},
		{Verb: hostverb.VerbWait, ID: "d", Timeout: time.Second, Reject: true},
		{Verb: "shell"},
		{Verb: hostverb.VerbActivate, ID: "d", Mode: hostverb.Switch, ConfirmTimeout: time.Second, KernelChange: "report", Path: p, Paths: []string{p}},
		// What comes as JSON to the agent is checked as the wire form is.
		{Verb: hostverb.VerbReboot},
		{Verb: hostverb.VerbReboot, ID: "d", Path: p},
		{Verb: hostverb.VerbReboot, ID: "d", Generation: 2},
		{Verb: hostverb.VerbRollback, ID: "d", Boot: true},
		{Verb: hostverb.VerbRollback, ID: "d", Generation: 2},
		{Verb: hostverb.VerbRollback, ID: "d", Boot: true, Generation: -2},
		{Verb: hostverb.VerbRollback, ID: "d", Boot: true, Generation: hostverb.MaxGeneration + 1},
		{Verb: hostverb.VerbRollback, ID: "d", Boot: true, Generation: 2, Path: p},
		{Verb: hostverb.VerbStatus, Booted: true},
		{Verb: hostverb.VerbActivate, ID: "d", Mode: hostverb.Boot, ConfirmTimeout: time.Second, KernelChange: "boot", Path: p, Boot: true},
	}
	for _, r := range bad {
		if err := r.Validate(hostverb.DefaultStoreDir); !errors.Is(err, hostverb.ErrInvalid) {
			t.Errorf("%+v: %v, want invalid", r, err)
		}
	}
}

func TestErrorFor(t *testing.T) {
	for _, code := range []int{1, 3, 4, 5, 6, 8, 126} {
		err := hostverb.ErrorFor(code, "the host's words")
		if hostverb.ExitCode(err) != code || err.Error() != "the host's words" {
			t.Errorf("code %d: %v maps back to %d", code, err, hostverb.ExitCode(err))
		}
	}
	if hostverb.ErrorFor(0, "x") != nil {
		t.Error("exit 0 is no error")
	}
}

func FuzzParseCommand(f *testing.F) {
	f.Add("deployer fetch " + p)
	f.Add("sudo -n " + self + " activate --mode switch --id x " + p)
	f.Add("deployer status --local --local=false --file /dev/stdin")
	f.Add("sh -c 'id'")
	f.Add("sudo -n deployer reboot --id r-1")
	f.Add("deployer rollback --boot --generation 12")
	f.Add("deployer health --id d-1 --booted")
	f.Fuzz(func(t *testing.T, cmd string) {
		r, form, err := hostverb.ParseCommand(cmd)
		if err != nil {
			if !errors.Is(err, hostverb.ErrRefused) {
				t.Fatalf("error %v does not wrap ErrRefused", err)
			}
			return
		}
		if err := r.Validate(hostverb.DefaultStoreDir); err != nil {
			t.Fatalf("parsed %+v does not validate: %v", r, err)
		}
		v := form
		if v == 2 {
			v = hostverb.Contract // the sudo-less form: this contract's
		}
		w, err := r.Encode(v)
		if v == 1 && errors.Is(err, hostverb.ErrUnsupported) {
			// A newer verb or flag through the sudo form: the gate runs it
			// all the same; a push side sends it in this contract's form.
			w, err = r.Encode(hostverb.Contract)
		}
		if err != nil {
			t.Fatalf("parsed %+v does not encode: %v", r, err)
		}
		again, _, err := hostverb.ParseCommand(strings.Join(w, " "))
		if again.KernelChange == hostverb.KernelRefuse && r.KernelChange == hostverb.KernelReport {
			again.KernelChange = r.KernelChange
		}
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("%q -> %+v -> %q -> %+v %v", cmd, r, w, again, err)
		}
		for _, x := range w {
			if !hostverb.SafeWord(x) {
				t.Fatalf("unsafe word %q", x)
			}
		}
	})
}
