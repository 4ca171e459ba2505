package cocoon

import (
	"encoding/json"
	"maps"
)

// UnmarshalJSON decodes a sandbox's persisted record, dropping container
// entries that are null: everything that reads the record takes each
// entry for a container, and a null one holds nothing to keep.
func (st *sandboxState) UnmarshalJSON(b []byte) error {
	type plain sandboxState // without this method
	if err := json.Unmarshal(b, (*plain)(st)); err != nil {
		return err
	}
	maps.DeleteFunc(st.Containers, func(_ string, c *containerState) bool { return c == nil })
	return nil
}
