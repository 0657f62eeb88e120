package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
)

// ErrNoSocket means systemd passed no socket (LISTEN_FDS unset or not ours).
var ErrNoSocket = errors.New("no socket passed by systemd")

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// Activated returns the socket systemd passed (sd_listen_fds(3)): with
// Accept=yes the connection itself (conn set), with Accept=no the
// listening socket (ln set). The environment variables are unset, so
// children do not take them for theirs.
func Activated() (conn *net.UnixConn, ln *net.UnixListener, err error) {
	pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if pid != os.Getpid() || n < 1 {
		return nil, nil, ErrNoSocket
	}
	if n != 1 {
		return nil, nil, fmt.Errorf("systemd passed %d sockets, want 1", n)
	}
	fd := listenFDsStart
	syscall.CloseOnExec(fd)
	listening, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	if err != nil {
		return nil, nil, fmt.Errorf("passed socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "systemd-socket")
	defer f.Close() // the net.Conn/Listener below holds its own duplicate
	if listening == 1 {
		l, err := net.FileListener(f)
		if err != nil {
			return nil, nil, fmt.Errorf("passed socket: %w", err)
		}
		ul, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, nil, errors.New("passed socket is not a unix socket")
		}
		return nil, ul, nil
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, nil, fmt.Errorf("passed socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, nil, errors.New("passed socket is not a unix socket")
	}
	return uc, nil, nil
}

// Listen creates the agent's socket at path (replacing a stale one) for
// hosts without systemd socket activation: owned by root, group gid, mode
// 0660, so only root and that group may connect; the peer check stays the
// real gate.
func Listen(path string, gid int) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("agent: listen %s: %w", path, err)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	return ln, nil
}
