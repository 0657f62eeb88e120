package fleettest

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Ticks is now, in the clock ticks (USER_HZ, 100 on Linux) that
// /proc/PID/stat gives start times in.
func Ticks() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var up float64
	fmt.Sscanf(string(b), "%f", &up)
	return int64(up*100) + 1
}

// StartTicks is when pid started, in clock ticks since boot (field 22 of
// /proc/PID/stat); a gone process counts as started now.
func StartTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 1 << 62
	}
	// the command name (field 2) may hold spaces: count from its ")"
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 {
		return 1 << 62
	}
	n, _ := strconv.ParseInt(f[19], 10, 64)
	return n
}
