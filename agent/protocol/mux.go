package protocol

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// YamuxConfig is the yamux configuration both ends of a virtio-serial agent
// channel use. Keep-alives are off: an idle VM must not be woken up, and a
// host that goes away shows up as end of file on the guest's port.
func YamuxConfig(log io.Writer) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 30 * time.Second
	// Process output streams move megabytes; yamux's default 256 KiB window
	// caps a stream at one window per round trip over the serial port.
	cfg.MaxStreamWindowSize = 4 << 20
	cfg.LogOutput = log
	return cfg
}
