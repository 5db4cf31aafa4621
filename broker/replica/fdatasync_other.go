//go:build !linux

package replica

import "os"

func fdatasync(f *os.File) error { return f.Sync() }
