package agent

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// The count covers packed scalars, nested messages and unpacked
// elements alike, and agrees with what protobuf decodes.
func TestCheckRepeatedCounts(t *testing.T) {
	loc := &descriptorpb.SourceCodeInfo_Location{Path: make([]int32, 300), Span: []int32{1, 200, 3}}
	loc.Path[7] = 1 << 20 // a multi-byte varint is one element
	info := &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{loc, {LeadingDetachedComments: []string{"a", "b"}}}}
	b, err := proto.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	md := info.ProtoReflect().Descriptor()
	const want = 2 + 300 + 3 + 2 // locations, paths, spans, comments
	if err := checkRepeated(b, md, want); err != nil {
		t.Errorf("limit %d: %v", want, err)
	}
	if err := checkRepeated(b, md, want-1); !errors.Is(err, errTooManyElements) {
		t.Errorf("limit %d: err = %v, want errTooManyElements", want-1, err)
	}
}

func TestCheckRepeatedMalformed(t *testing.T) {
	md := (&descriptorpb.SourceCodeInfo{}).ProtoReflect().Descriptor()
	bad := [][]byte{
		{0x0a, 0x05, 0x01},       // length beyond the message
		{0x0a},                   // tag without value
		{0xff, 0xff, 0xff, 0xff}, // truncated tag
	}
	for _, b := range bad {
		if err := checkRepeated(b, md, 1000); err == nil {
			t.Errorf("%x: no error", b)
		}
	}
	// Unknown fields are not counted: protobuf keeps them as raw bytes.
	unknown := protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), nil)
	if err := checkRepeated(append(unknown, unknown...), md, 0); err != nil {
		t.Errorf("unknown fields: %v", err)
	}
}
