package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is a release's tag, set at build time with
// -ldflags "-X main.version=v1.2.3". Left empty, the module's build info
// decides (see buildVersion).
var version = ""

func init() { version = buildVersion(version, readBuildInfo()) }

func readBuildInfo() *debug.BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return bi
}

// buildVersion names this build: the -ldflags tag when one was given; else
// the module's version when it was installed as a module
// (go install github.com/postbus/postbus/cmd/postbus@v1.2.3); else "dev-"
// and the commit a checkout was built from, "-dirty" if it had changes
// not committed; else "dev".
func buildVersion(ldflags string, bi *debug.BuildInfo) string {
	if ldflags != "" {
		return ldflags
	}
	if bi == nil {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "dev-" + rev
	if modified == "true" {
		v += "-dirty"
	}
	return v
}

// versionString is what `postbus version` prints.
func versionString() string {
	return fmt.Sprintf("postbus %s %s %s/%s", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
