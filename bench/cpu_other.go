//go:build !unix

package main

import "time"

// serverCPU cannot be read here: CPU per request is left out.
func serverCPU(int) (time.Duration, bool) { return 0, false }
