package host_test

import (
	"os"
	"syscall"
)

// fdDup gives the worker goroutine its own descriptor of the same open file
// description, as fork+exec does for the real worker.
func fdDup(f *os.File) *os.File {
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		panic(err)
	}
	return os.NewFile(uintptr(fd), f.Name())
}
