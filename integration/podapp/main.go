// Command podapp is the pause and application image of the containerd
// test: with no argument it sleeps until SIGTERM (a pod's pause process);
// with "addr:port backlog" it listens with exactly that backlog and never
// accepts, so clients overflow its accept queue; a third argument N holds
// N more open file descriptors (an owner near its RLIMIT_NOFILE).
package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) >= 3 {
		if err := listen(os.Args[1], os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "podapp:", err)
			os.Exit(1)
		}
	}
	if len(os.Args) == 4 {
		n, _ := strconv.Atoi(os.Args[3])
		for range n {
			if _, err := os.Open("/dev/null"); err != nil {
				fmt.Fprintln(os.Stderr, "podapp:", err)
				os.Exit(1)
			}
		}
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}

func listen(addr, backlog string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(backlog)
	if err != nil {
		return err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	return syscall.Listen(fd, n) // kept open, never accepted, until exit
}
