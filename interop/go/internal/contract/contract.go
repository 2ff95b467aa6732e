// Package contract holds what both the connector and the client library check of the
// ExchangeService contract: decimal strings, symbols, and a codec that lets a server see the
// bytes of a request that does not parse (so it can answer INVALID_ARGUMENT, rule C35) and send
// bytes encoded once for many subscribers.
package contract

import (
	"fmt"
	"regexp"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
)

var (
	decimal = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	symbol  = regexp.MustCompile(`^[A-Z0-9]{1,32}$`)
)

// IsDecimal reports whether s is a decimal string of the contract: -?[0-9]+(\.[0-9]+)?.
func IsDecimal(s string) bool { return decimal.MatchString(s) }

// ValidSymbol reports whether s is an instrument name (1-32 characters of A-Z0-9) or empty.
func ValidSymbol(s string) bool { return s == "" || symbol.MatchString(s) }

// FieldProblem names a money field that is not a decimal string.
type FieldProblem struct {
	Field string
	Value string
}

func (p *FieldProblem) Error() string {
	return fmt.Sprintf("%s %q is not a decimal string", p.Field, p.Value)
}

// CheckAccount returns the first money field of a that is not a decimal string, or nil.
func CheckAccount(a *pb.Account) *FieldProblem {
	for _, f := range []struct{ name, value string }{
		{"total_balance", a.GetTotalBalance()},
		{"available_balance", a.GetAvailableBalance()},
		{"equity", a.GetEquity()},
		{"unrealized_pnl", a.GetUnrealizedPnl()},
		{"margin_used", a.GetMarginUsed()},
		{"margin_level", a.GetMarginLevel()},
		{"leverage", a.GetLeverage()},
	} {
		if !IsDecimal(f.value) {
			return &FieldProblem{Field: f.name, Value: f.value}
		}
	}
	return nil
}

// CheckPosition returns the first money field of p that is not a decimal string, or nil.
func CheckPosition(p *pb.Position) *FieldProblem {
	for _, f := range []struct{ name, value string }{
		{"size", p.GetSize()},
		{"entry_price", p.GetEntryPrice()},
		{"mark_price", p.GetMarkPrice()},
		{"leverage", p.GetLeverage()},
		{"unrealized_pnl", p.GetUnrealizedPnl()},
		{"liquidation", p.GetLiquidation()},
	} {
		if !IsDecimal(f.value) {
			return &FieldProblem{Field: f.name, Value: f.value}
		}
	}
	return nil
}

// Frame is a message already encoded, or a request not yet decoded: the Codec passes its bytes
// through unchanged in both directions.
type Frame struct {
	Bytes []byte
}

// Codec is the "proto" codec with one addition: a *Frame is sent and received as raw bytes.
// grpc-go answers INTERNAL when a codec fails to unmarshal a request, before any handler or
// interceptor runs; receiving into a Frame and decoding in the handler lets the connector answer
// INVALID_ARGUMENT instead.
type Codec struct {
	proto encoding.CodecV2
}

// NewCodec wraps grpc-go's registered proto codec.
func NewCodec() *Codec {
	return &Codec{proto: encoding.GetCodecV2("proto")}
}

// Name is the content subtype this codec serves.
func (c *Codec) Name() string { return "proto" }

// Marshal encodes v; a *Frame goes out as it is.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.Bytes)}, nil
	}
	return c.proto.Marshal(v)
}

// Unmarshal decodes data into v; into a *Frame it copies the bytes, whatever they hold.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		f.Bytes = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

// Decode parses a request frame strictly (proto3 strings must be UTF-8).
func Decode(f *Frame, m proto.Message) error {
	return proto.Unmarshal(f.Bytes, m)
}
