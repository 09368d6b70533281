// Command pause is the sandbox ("pause") process of the real node's pods: it holds the
// pod's namespaces, reaps zombies as PID 1 must, and exits on SIGINT/SIGTERM. No image
// registry is reachable here, so the node's sandbox_image is built from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
