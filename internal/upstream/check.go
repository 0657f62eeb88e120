package upstream

import (
	"bytes"
	"fmt"

	"github.com/bos55/concordia/pkg/narinfo"
)

// check judges a narinfo body u sent for hashPart: an Answer only when it
// parses, names hashPart in the store directory, and carries a valid
// signature by one of u's keys; otherwise a *badAnswer. A content-addressed
// path needs a signature too: the NAR is checked after download, but the
// cache would sign and serve the narinfo before that.
func (s *Set) check(u *Upstream, hashPart string, body []byte) (*Answer, error) {
	ni, err := narinfo.Parse(bytes.NewReader(body))
	if err != nil {
		return nil, &badAnswer{ReasonMalformed, err}
	}
	dir, h, _, err := narinfo.ParseStorePath(ni.StorePath)
	if err != nil || dir != s.opts.StoreDir || h != hashPart {
		return nil, &badAnswer{ReasonWrongPath, fmt.Errorf("narinfo for another store path: asked %s/%s-*, got %q", s.opts.StoreDir, hashPart, ni.StorePath)}
	}
	if n := len(ni.Sigs); n > s.opts.Limits.MaxSignatures {
		return nil, &badAnswer{ReasonTooManySigs, fmt.Errorf("%d signatures, more than %d", n, s.opts.Limits.MaxSignatures)}
	}
	if len(ni.Sigs) == 0 {
		return nil, &badAnswer{ReasonUnsigned, fmt.Errorf("%s has no signature", ni.StorePath)}
	}
	signer, ok := ni.Verify(u.Keys)
	if !ok {
		return nil, &badAnswer{ReasonWrongSignature, fmt.Errorf("%s has no valid signature by %s", ni.StorePath, keyNames(u.Keys))}
	}
	if _, err := u.resolve(ni.URL); err != nil {
		return nil, &badAnswer{ReasonForeignURL, err}
	}
	return &Answer{Upstream: u, NarInfo: ni, Signer: signer}, nil
}

func keyNames(keys []narinfo.PublicKey) string {
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k.Name())
	}
	return b.String()
}
