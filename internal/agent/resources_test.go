package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"google.golang.org/protobuf/proto"
)

func resourcesReply(t *testing.T, r *protocol.GuestResources) *Client {
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return hostileClient(t, func(string) []byte { return withPayload(b) })
}

// A guest that claims more vCPUs or memory online than the host gave its
// VM is lying; the host refuses its word.
func TestOnlineResourcesRefusesLies(t *testing.T) {
	const given, mem = 2, 512 << 20
	for name, r := range map[string]*protocol.GuestResources{
		"a vCPU it was not given": {OnlineCpus: 3, MemTotalBytes: 400 << 20},
		"no vCPU at all":          {OnlineCpus: 0, MemTotalBytes: 400 << 20},
		"more memory than given":  {OnlineCpus: 2, MemTotalBytes: mem + 1},
		"absurd vCPUs":            {OnlineCpus: 1 << 31, MemTotalBytes: 400 << 20},
	} {
		_, err := resourcesReply(t, r).OnlineResources(context.Background(), given, mem, time.Second)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
	got, err := resourcesReply(t, &protocol.GuestResources{OnlineCpus: 2, MemTotalBytes: 480 << 20}).OnlineResources(context.Background(), given, mem, time.Second)
	if err != nil || got != (GuestResources{OnlineCPUs: 2, MemoryBytes: 480 << 20}) {
		t.Errorf("plausible reply: %+v, %v", got, err)
	}
}
