//! Input rules of the flow-definition use cases, with authentik's field names and DRF's wording.

/// DRF: a required field is missing.
pub const REQUIRED: &str = "This field is required.";
/// DRF: a string field is empty or only whitespace.
pub const BLANK: &str = "This field may not be blank.";

/// DRF: `Ensure this field has no more than {max} characters.`
pub fn too_long(max: usize) -> String {
    format!("Ensure this field has no more than {max} characters.")
}
