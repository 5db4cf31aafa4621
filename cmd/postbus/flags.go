package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// envName is the environment variable for a flag: flush-interval is
// POSTBUS_FLUSH_INTERVAL.
func envName(flagName string) string {
	return "POSTBUS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags applies POSTBUS_* environment variables, then the command
// line, so that a flag given on the command line wins.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err))
			}
		}
	})
	if len(errs) > 0 {
		fmt.Fprintf(fs.Output(), "invalid environment: %s\n", strings.Join(errs, "; "))
		return errUsage
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %q\n", fs.Args())
		return errUsage
	}
	return nil
}

// byteSize is a flag for sizes like 4MiB, 128MiB, 1GiB or plain bytes.
type byteSize int64

func (s *byteSize) String() string { return formatBytes(int64(*s)) }

func (s *byteSize) Set(v string) error {
	n, err := parseBytes(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

func parseBytes(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size like 4MiB, 128MiB or 1048576", v)
	}
	return n * mult, nil
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10)
}

// flushMode is --flush: sync or async.
type flushMode bool // true: sync

func (m *flushMode) String() string {
	if *m {
		return "sync"
	}
	return "async"
}

func (m *flushMode) Set(v string) error {
	switch v {
	case "sync":
		*m = true
	case "async":
		*m = false
	default:
		return fmt.Errorf("%q: want sync or async", v)
	}
	return nil
}
