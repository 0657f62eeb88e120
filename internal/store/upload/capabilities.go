package upload

import "github.com/bos55/concordia/internal/store"

// The upload store is every capability the server serves uploads and the
// admin API through; the compiler checks it here, and storetest's
// RunUploader checks the behaviour.
var (
	_ store.Uploader     = (*Store)(nil)
	_ store.Adopter      = (*Store)(nil)
	_ store.Pinner       = (*Store)(nil)
	_ store.Collector    = (*Store)(nil)
	_ store.Verifier     = (*Store)(nil)
	_ store.Forgetter    = (*Store)(nil)
	_ store.Logger       = (*Store)(nil)
	_ store.LogFiles     = (*Store)(nil)
	_ store.Realisations = (*Store)(nil)
	_ store.FileNAR      = (*Store)(nil)
	_ store.RangeNAR     = (*Store)(nil)
	_ store.WriterTold   = (*Store)(nil)
)

// The types of those capabilities are package store's, shared by every
// backend; this package names them as it did before they moved there.
type (
	BlobInfo     = store.BlobInfo
	Pin          = store.Pin
	Policy       = store.Policy
	Report       = store.GCReport
	BadBlob      = store.BadBlob
	VerifyReport = store.VerifyReport
)

// Errors of the pin capability (store.ErrNotOwner, store.ErrTooManyPins).
var (
	ErrNotOwner    = store.ErrNotOwner
	ErrTooManyPins = store.ErrTooManyPins
)

// ParseNARName is store.ParseNARName.
func ParseNARName(name string) (fileHash []byte, compression string, err error) {
	return store.ParseNARName(name)
}
