//go:build unix

package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
)

// serverCPU is the CPU time used so far by the server side of the
// benchmark: the Caddy process (all its threads) and this process, where
// the upstream runs. wrk's own time is left out, so that CPU per request
// is what the gateway and the app cost, whoever else shares the cores.
// It returns false where that cannot be read (no /proc).
func serverCPU(caddyPID int) (time.Duration, bool) {
	caddy, ok := processCPU(caddyPID)
	if !ok {
		return 0, false
	}
	var self syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		return 0, false
	}
	return caddy + time.Duration(self.Utime.Nano()+self.Stime.Nano()), true
}

// clockTick is Linux's USER_HZ, the unit of /proc's CPU times; it is 100
// on every architecture Linux supports today.
const clockTick = 10 * time.Millisecond

// processCPU reads a process's user and system time, all threads, from
// /proc/PID/stat (fields 14 and 15, counted after the parenthesised name,
// which may itself hold spaces).
func processCPU(pid int) (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	fields := bytes.Fields(rest) // fields[0] is field 3, the state
	if len(fields) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(string(fields[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(fields[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * clockTick, true
}
