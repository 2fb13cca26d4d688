//! The stanza model, with its two encodings: the textual XML of wire profile `interop-xml/1`
//! (`xml.rs`) and the binary nodes of profile `wa` (`binary.rs`).
//!
//! A [`Stanza`] is what WhatsApp's vocabulary is made of: a tag, ordered attributes
//! with unique keys, and either nothing, child stanzas, or binary bytes ([`Content`]).
//! The model knows nothing about either encoding: [`Stanza::to_xml`] and [`parse`] are the
//! text one, [`Stanza::to_binary`] and [`parse_binary`] the binary one, and both refuse
//! what [`Stanza::validate`] refuses, so a stanza means the same in both.
//! Framing belongs to [`crate::frame`]. This is a sans-I/O core: no I/O, no clock,
//! no randomness.
//!
//! The XML parser takes one frame's payload and accepts a deliberately small XML subset.
//! Every refusal is a typed [`StanzaError`] whose [`reason`](StanzaError::reason) the
//! shell sends in its closing `<stream:error>` or `<failure>`:
//!
//! - exactly one root element; only XML whitespace (space, tab, CR, LF) around it;
//!   no byte-order mark;
//! - no XML declaration, processing instruction, DOCTYPE, comment or CDATA section,
//!   anywhere. Nothing our peers send needs them, and a DOCTYPE is how entity bombs
//!   and external entities get in;
//! - references: the five predefined entities (`&lt;` `&gt;` `&amp;` `&quot;`
//!   `&apos;`) and numeric character references (`&#60;`, `&#x3C;`) that name an
//!   XML character are accepted, since neither can expand into more markup; every
//!   other `&name;` is [`StanzaError::UndefinedEntity`];
//! - names (tags and attribute keys) are 1..=[`MAX_NAME_BYTES`] ASCII bytes,
//!   `[A-Za-z_][A-Za-z0-9_.:-]*`; no namespace processing (`xmlns` and `stream:error`
//!   are plain names);
//! - attribute values are XML characters other than tab, CR and LF, at most
//!   [`MAX_ATTR_VALUE_BYTES`] once unescaped. A conforming XML parser would turn a
//!   raw tab or newline into a space, so refusing them keeps every value exact;
//! - an element holds children or text, never both (whitespace between children is
//!   ignored). Text is the standard base64 (with canonical padding, no whitespace)
//!   of the [`Content::Bytes`] payload. An element with neither, such as `<a/>`,
//!   `<a></a>` or `<a> </a>`, has [`Content::Empty`];
//! - at most [`MAX_DEPTH`] nested elements, [`MAX_ATTRS_PER_ELEMENT`] attributes and
//!   [`MAX_CHILDREN_PER_ELEMENT`] children per element. The total is bounded by the
//!   frame size ([`crate::frame::MAX_FRAME_BYTES`]).
//!
//! [`Stanza::to_xml`] writes the canonical form: no declaration, no whitespace, `<a/>`
//! for empty content, attribute values escaped with the five predefined entities.
//! The round-trip law is `parse(&s.to_xml()) == Ok(s)` for every stanza `s` that
//! passes [`Stanza::validate`], which checks the same rules on a model built in code.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use quick_xml::errors::{Error as XmlError, IllFormedError};
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

mod binary;
pub mod wa_jids;
mod xml;

pub use binary::{BinaryError, MAX_INFLATED_NODE_BYTES, Writer, parse_binary};
pub use xml::parse;
use xml::*;

/// Deepest nesting of elements in one stanza, in elements; the root is depth 1.
pub const MAX_DEPTH: usize = 16;
/// Most attributes on one element, in attributes.
pub const MAX_ATTRS_PER_ELEMENT: usize = 32;
/// Most children of one element, in elements. A `<participants>` lists one `<to>`
/// for each recipient device, so this is generous.
pub const MAX_CHILDREN_PER_ELEMENT: usize = 2048;
/// Longest tag or attribute name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest attribute value once unescaped, in bytes of UTF-8.
pub const MAX_ATTR_VALUE_BYTES: usize = 4096;

/// One stanza: a tag, ordered attributes with unique keys, and content.
///
/// Build with [`Stanza::new`] and the chained [`attr`](Stanza::attr),
/// [`child`](Stanza::child) and [`bytes`](Stanza::bytes) methods; read with
/// [`attr_value`](Stanza::attr_value), [`children`](Stanza::children),
/// [`child_named`](Stanza::child_named) and [`payload`](Stanza::payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// The element name, e.g. `message` or `stream:error`.
    pub tag: String,
    /// Attributes in wire order; keys are unique.
    pub attrs: Vec<(String, String)>,
    /// What the element holds.
    pub content: Content,
}

/// What an element holds. WhatsApp stanzas carry children or binary, never text.
///
/// The canonical form of "nothing" is [`Content::Empty`]; `Children` and `Bytes`
/// are never empty in a valid stanza (see [`Stanza::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    /// No children and no bytes: `<tag/>`.
    #[default]
    Empty,
    /// Child elements, in order.
    Children(Vec<Stanza>),
    /// Binary payload, standard base64 on the wire.
    Bytes(Vec<u8>),
}

/// Why a frame is not a stanza, or a stanza lacks what its reader requires.
///
/// Variants with `offset: usize` come only from [`parse`]; the offset is in bytes
/// from the start of the frame's payload. Variants with `offset: Option<usize>` can
/// also come from [`Stanza::validate`], which reports `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StanzaError {
    /// Peer sent bytes that are not UTF-8 (a UTF-8 byte-order mark counts as text
    /// outside the root instead). Close with reason `bad_utf8`.
    BadUtf8 {
        /// Length of the valid UTF-8 prefix.
        offset: usize,
    },
    /// Peer sent an XML declaration (`<?xml ...?>`). Close with `xml_declaration`.
    XmlDeclaration {
        /// Where the declaration starts.
        offset: usize,
    },
    /// Peer sent a processing instruction (`<?target ...?>`). Close with
    /// `processing_instruction`.
    ProcessingInstruction {
        /// Where the instruction starts.
        offset: usize,
    },
    /// Peer sent a DOCTYPE, the door to entity bombs and external entities. Close
    /// with `doctype`.
    Doctype {
        /// Where the DOCTYPE starts.
        offset: usize,
    },
    /// Peer sent a comment. Close with `comment`.
    Comment {
        /// Where the comment starts.
        offset: usize,
    },
    /// Peer sent a CDATA section. Close with `cdata`.
    Cdata {
        /// Where the section starts.
        offset: usize,
    },
    /// Peer referenced an entity other than the five predefined ones. Close with
    /// `undefined_entity`.
    UndefinedEntity {
        /// Where the element or text holding the reference starts.
        offset: usize,
    },
    /// Peer sent a malformed reference: a lone `&`, a missing `;`, or a character
    /// reference to something that is not an XML character. Close with
    /// `bad_reference`.
    BadReference {
        /// Where the element or text holding the reference starts.
        offset: usize,
    },
    /// Peer sent something that is not well-formed XML (unclosed markup, bad
    /// attribute syntax). Close with `malformed_xml`.
    Malformed {
        /// Where the parser gave up.
        offset: usize,
    },
    /// Peer sent an end tag that does not close the open element, or left an
    /// element open at the end of the frame. Close with `unbalanced_tags`.
    UnbalancedTags {
        /// Where the offending end tag is, or the frame length if one was left open.
        offset: usize,
    },
    /// Peer sent a frame with no element in it. Close with `missing_root`.
    MissingRoot {
        /// Length of the frame's payload.
        frame_bytes: usize,
    },
    /// Peer sent non-whitespace text before the root element. Close with
    /// `text_outside_root`.
    TextOutsideRoot {
        /// Where the text starts.
        offset: usize,
    },
    /// Peer sent anything but whitespace after the root element. Close with
    /// `trailing_content`.
    TrailingContent {
        /// Where the trailing content starts.
        offset: usize,
    },
    /// An element repeats an attribute key: peer (parse) or our caller (validate).
    /// Close with `duplicate_attribute`.
    DuplicateAttribute {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
    },
    /// A tag or attribute name is empty or outside `[A-Za-z_][A-Za-z0-9_.:-]*`: peer
    /// (parse) or our caller (validate). Close with `invalid_name`.
    InvalidName {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
    },
    /// A tag or attribute name is longer than [`MAX_NAME_BYTES`]: peer (parse) or our
    /// caller (validate). Close with `name_too_long`.
    NameTooLong {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
        /// The name's length.
        len_bytes: usize,
    },
    /// An attribute value is longer than [`MAX_ATTR_VALUE_BYTES`] unescaped: peer
    /// (parse) or our caller (validate). Close with `attr_value_too_long`.
    AttrValueTooLong {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
        /// The unescaped value's length.
        len_bytes: usize,
    },
    /// An attribute value holds a raw `<`, a tab, CR, LF, or a character XML
    /// forbids: peer (parse) or our caller (validate). Close with
    /// `invalid_attr_value`.
    InvalidAttrValue {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
    },
    /// Elements nest deeper than [`MAX_DEPTH`]: peer (parse) or our caller
    /// (validate). Close with `too_deep`.
    TooDeep {
        /// Where the first too-deep element starts; `None` from validate.
        offset: Option<usize>,
    },
    /// An element has more than [`MAX_ATTRS_PER_ELEMENT`] attributes: peer (parse) or
    /// our caller (validate). Close with `too_many_attributes`.
    TooManyAttributes {
        /// Where the element starts; `None` from validate.
        offset: Option<usize>,
    },
    /// An element has more than [`MAX_CHILDREN_PER_ELEMENT`] children: peer (parse)
    /// or our caller (validate). Close with `too_many_children`.
    TooManyChildren {
        /// Where the first child over the bound starts; `None` from validate.
        offset: Option<usize>,
    },
    /// Peer mixed text and child elements in one element. Close with
    /// `mixed_content`.
    MixedContent {
        /// Where the second kind of content starts.
        offset: usize,
    },
    /// Peer sent element text that is not canonical standard base64. Close with
    /// `not_base64`.
    NotBase64 {
        /// Where the text starts.
        offset: usize,
    },
    /// Our caller built `Content::Children(vec![])` or `Content::Bytes(vec![])`,
    /// which has no wire form distinct from `Content::Empty`; a bug upstream.
    NonCanonicalEmpty {
        /// The element's tag.
        tag: String,
    },
    /// Peer sent a stanza without an attribute its reader requires. Answer with
    /// `missing_attribute` (an error ack or failure, per stanza).
    MissingAttribute {
        /// The element's tag.
        tag: String,
        /// The attribute that was required.
        attribute: String,
    },
    /// Peer sent a stanza without a child its reader requires. Answer with
    /// `missing_child`.
    MissingChild {
        /// The element's tag.
        tag: String,
        /// The child tag that was required.
        child: String,
    },
}

impl StanzaError {
    /// A short `snake_case` code for the closing `<stream:error>`, a `<failure
    /// reason=...>`, an error ack, or a log line.
    pub fn reason(&self) -> &'static str {
        match self {
            StanzaError::BadUtf8 { .. } => "bad_utf8",
            StanzaError::XmlDeclaration { .. } => "xml_declaration",
            StanzaError::ProcessingInstruction { .. } => "processing_instruction",
            StanzaError::Doctype { .. } => "doctype",
            StanzaError::Comment { .. } => "comment",
            StanzaError::Cdata { .. } => "cdata",
            StanzaError::UndefinedEntity { .. } => "undefined_entity",
            StanzaError::BadReference { .. } => "bad_reference",
            StanzaError::Malformed { .. } => "malformed_xml",
            StanzaError::UnbalancedTags { .. } => "unbalanced_tags",
            StanzaError::MissingRoot { .. } => "missing_root",
            StanzaError::TextOutsideRoot { .. } => "text_outside_root",
            StanzaError::TrailingContent { .. } => "trailing_content",
            StanzaError::DuplicateAttribute { .. } => "duplicate_attribute",
            StanzaError::InvalidName { .. } => "invalid_name",
            StanzaError::NameTooLong { .. } => "name_too_long",
            StanzaError::AttrValueTooLong { .. } => "attr_value_too_long",
            StanzaError::InvalidAttrValue { .. } => "invalid_attr_value",
            StanzaError::TooDeep { .. } => "too_deep",
            StanzaError::TooManyAttributes { .. } => "too_many_attributes",
            StanzaError::TooManyChildren { .. } => "too_many_children",
            StanzaError::MixedContent { .. } => "mixed_content",
            StanzaError::NotBase64 { .. } => "not_base64",
            StanzaError::NonCanonicalEmpty { .. } => "non_canonical_empty",
            StanzaError::MissingAttribute { .. } => "missing_attribute",
            StanzaError::MissingChild { .. } => "missing_child",
        }
    }
}

impl fmt::Display for StanzaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StanzaError::MissingAttribute { tag, attribute } => {
                write!(f, "<{tag}> lacks required attribute `{attribute}`")
            }
            StanzaError::MissingChild { tag, child } => {
                write!(f, "<{tag}> lacks required child <{child}>")
            }
            StanzaError::NonCanonicalEmpty { tag } => {
                write!(f, "<{tag}> has empty children or bytes; use Content::Empty")
            }
            StanzaError::MissingRoot { frame_bytes } => {
                write!(f, "no element in a {frame_bytes}-byte frame")
            }
            StanzaError::NameTooLong {
                offset, len_bytes, ..
            } => write!(
                f,
                "name of {len_bytes} bytes exceeds {MAX_NAME_BYTES}{}",
                At(*offset)
            ),
            StanzaError::AttrValueTooLong {
                offset, len_bytes, ..
            } => write!(
                f,
                "attribute value of {len_bytes} bytes exceeds {MAX_ATTR_VALUE_BYTES}{}",
                At(*offset)
            ),
            StanzaError::BadUtf8 { offset }
            | StanzaError::XmlDeclaration { offset }
            | StanzaError::ProcessingInstruction { offset }
            | StanzaError::Doctype { offset }
            | StanzaError::Comment { offset }
            | StanzaError::Cdata { offset }
            | StanzaError::UndefinedEntity { offset }
            | StanzaError::BadReference { offset }
            | StanzaError::Malformed { offset }
            | StanzaError::UnbalancedTags { offset }
            | StanzaError::TextOutsideRoot { offset }
            | StanzaError::TrailingContent { offset }
            | StanzaError::MixedContent { offset }
            | StanzaError::NotBase64 { offset } => {
                write!(f, "{}{}", self.reason(), At(Some(*offset)))
            }
            StanzaError::DuplicateAttribute { offset }
            | StanzaError::InvalidName { offset }
            | StanzaError::InvalidAttrValue { offset }
            | StanzaError::TooDeep { offset }
            | StanzaError::TooManyAttributes { offset }
            | StanzaError::TooManyChildren { offset } => {
                write!(f, "{}{}", self.reason(), At(*offset))
            }
        }
    }
}

impl std::error::Error for StanzaError {}

/// Formats an optional frame offset as ` at byte N`, or nothing.
struct At(Option<usize>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, " at byte {offset}"),
            None => Ok(()),
        }
    }
}

impl Stanza {
    /// A stanza with this tag, no attributes and empty content.
    pub fn new(tag: impl Into<String>) -> Self {
        Stanza {
            tag: tag.into(),
            attrs: Vec::new(),
            content: Content::Empty,
        }
    }

    /// Sets attribute `key` to `value`. A key already present keeps its place and
    /// takes the new value, so keys stay unique.
    #[must_use]
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.attrs.push((key, value)),
        }
        self
    }

    /// Appends a child. Content that was bytes is replaced by this one child.
    #[must_use]
    pub fn child(mut self, child: Stanza) -> Self {
        match &mut self.content {
            Content::Children(children) => children.push(child),
            other => *other = Content::Children(vec![child]),
        }
        self
    }

    /// Appends every child from `children`, as [`child`](Self::child) does one by one.
    #[must_use]
    pub fn extend_children(self, children: impl IntoIterator<Item = Stanza>) -> Self {
        children.into_iter().fold(self, Stanza::child)
    }

    /// Sets the binary payload, replacing any children. An empty payload gives
    /// [`Content::Empty`], the canonical form of nothing.
    #[must_use]
    pub fn bytes(mut self, payload: impl Into<Vec<u8>>) -> Self {
        let payload = payload.into();
        self.content = if payload.is_empty() {
            Content::Empty
        } else {
            Content::Bytes(payload)
        };
        self
    }

    /// The value of attribute `key`, if present.
    pub fn attr_value(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of attribute `key`, or [`StanzaError::MissingAttribute`].
    pub fn require_attr(&self, key: &str) -> Result<&str, StanzaError> {
        self.attr_value(key)
            .ok_or_else(|| StanzaError::MissingAttribute {
                tag: self.tag.clone(),
                attribute: key.to_owned(),
            })
    }

    /// The children, or an empty slice when the content is empty or bytes.
    pub fn children(&self) -> &[Stanza] {
        match &self.content {
            Content::Children(children) => children,
            Content::Empty | Content::Bytes(_) => &[],
        }
    }

    /// The first child with this tag, if any.
    pub fn child_named(&self, tag: &str) -> Option<&Stanza> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// Every child with this tag, in order.
    pub fn children_named<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Stanza> + 'a {
        self.children().iter().filter(move |c| c.tag == tag)
    }

    /// The first child with this tag, or [`StanzaError::MissingChild`].
    pub fn require_child(&self, tag: &str) -> Result<&Stanza, StanzaError> {
        self.child_named(tag)
            .ok_or_else(|| StanzaError::MissingChild {
                tag: self.tag.clone(),
                child: tag.to_owned(),
            })
    }

    /// The binary payload, if the content is bytes.
    pub fn payload(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Bytes(bytes) => Some(bytes),
            Content::Empty | Content::Children(_) => None,
        }
    }

    /// Checks the rules [`parse`] enforces (names, values, bounds, unique keys) plus
    /// canonical emptiness. A stanza that passes round-trips through
    /// [`to_xml`](Self::to_xml) and [`parse`] unchanged.
    pub fn validate(&self) -> Result<(), StanzaError> {
        self.validate_at(1)
    }

    fn validate_at(&self, depth: usize) -> Result<(), StanzaError> {
        if depth > MAX_DEPTH {
            return Err(StanzaError::TooDeep { offset: None });
        }
        check_name(&self.tag, None)?;
        if self.attrs.len() > MAX_ATTRS_PER_ELEMENT {
            return Err(StanzaError::TooManyAttributes { offset: None });
        }
        for (index, (key, value)) in self.attrs.iter().enumerate() {
            check_name(key, None)?;
            check_attr_value(value, None)?;
            if self.attrs.iter().take(index).any(|(k, _)| k == key) {
                return Err(StanzaError::DuplicateAttribute { offset: None });
            }
        }
        match &self.content {
            Content::Empty => Ok(()),
            Content::Bytes(bytes) if bytes.is_empty() => Err(StanzaError::NonCanonicalEmpty {
                tag: self.tag.clone(),
            }),
            Content::Bytes(_) => Ok(()),
            Content::Children(children) if children.is_empty() => {
                Err(StanzaError::NonCanonicalEmpty {
                    tag: self.tag.clone(),
                })
            }
            Content::Children(children) if children.len() > MAX_CHILDREN_PER_ELEMENT => {
                Err(StanzaError::TooManyChildren { offset: None })
            }
            Content::Children(children) => children
                .iter()
                .try_for_each(|child| child.validate_at(depth + 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_str(xml: &str) -> Result<Stanza, StanzaError> {
        parse(xml.as_bytes())
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth))
    }

    // ---- accepted input -------------------------------------------------------

    #[test]
    fn message_with_participants_and_bytes_parses_into_the_model() {
        let xml = r#"<message id="3EB0ABC" to="1:0@s.whatsapp.net" type="text"><participants><to jid="1:2@s.whatsapp.net"><enc v="2" type="pkmsg">AAEC</enc></to></participants></message>"#;
        let expected = Stanza::new("message")
            .attr("id", "3EB0ABC")
            .attr("to", "1:0@s.whatsapp.net")
            .attr("type", "text")
            .child(
                Stanza::new("participants").child(
                    Stanza::new("to").attr("jid", "1:2@s.whatsapp.net").child(
                        Stanza::new("enc")
                            .attr("v", "2")
                            .attr("type", "pkmsg")
                            .bytes(vec![0, 1, 2]),
                    ),
                ),
            );
        assert_eq!(parse_str(xml), Ok(expected.clone()));
        assert_eq!(expected.to_xml(), xml.as_bytes());
    }

    #[test]
    fn to_xml_escapes_the_five_specials_in_attribute_values() {
        let stanza = Stanza::new("a").attr("v", r#"<&>"'"#);
        assert_eq!(
            stanza.to_xml(),
            b"<a v=\"&lt;&amp;&gt;&quot;&apos;\"/>".to_vec()
        );
        assert_eq!(parse(&stanza.to_xml()), Ok(stanza));
    }

    #[test]
    fn predefined_entities_and_numeric_references_are_resolved_in_attributes() {
        let parsed = parse_str("<a v='&lt;&#60;&#x3C;&#x1F600;&quot;\"'/>");
        assert_eq!(parsed, Ok(Stanza::new("a").attr("v", "<<<\u{1F600}\"\"")));
    }

    #[test]
    fn numeric_reference_in_text_counts_as_base64_text() {
        // `&#65;` is `A`; the text reads `QUJD`, the base64 of `ABC`.
        assert_eq!(
            parse_str("<enc>QUJ&#68;</enc>"),
            Ok(Stanza::new("enc").bytes(b"ABC".to_vec()))
        );
    }

    #[test]
    fn whitespace_around_root_and_between_children_is_ignored() {
        let parsed = parse_str(" \r\n<iq>\n  <ping/>\n\t<pong/>\n</iq>\n ");
        assert_eq!(
            parsed,
            Ok(Stanza::new("iq")
                .child(Stanza::new("ping"))
                .child(Stanza::new("pong")))
        );
    }

    #[test]
    fn open_close_pair_and_blank_text_are_empty_content() {
        assert_eq!(parse_str("<a></a>"), Ok(Stanza::new("a")));
        assert_eq!(parse_str("<a> \n </a>"), Ok(Stanza::new("a")));
        assert_eq!(parse_str("<a/>"), Ok(Stanza::new("a")));
    }

    #[test]
    fn namespaced_names_are_plain_names() {
        let parsed = parse_str(r#"<stream:error xmlns:stream="x"><conflict/></stream:error>"#);
        let stanza = parsed
            .as_ref()
            .map(|s| (s.tag.as_str(), s.attr_value("xmlns:stream")));
        assert_eq!(stanza, Ok(("stream:error", Some("x"))));
    }

    #[test]
    fn elements_exactly_at_every_bound_are_accepted() {
        let name = "n".repeat(MAX_NAME_BYTES);
        let value = "v".repeat(MAX_ATTR_VALUE_BYTES);
        let mut wide = Stanza::new(name.clone()).attr(name.clone(), value);
        for i in 1..MAX_ATTRS_PER_ELEMENT {
            wide = wide.attr(format!("k{i}"), "x");
        }
        wide = wide.extend_children((0..MAX_CHILDREN_PER_ELEMENT).map(|_| Stanza::new("to")));
        assert_eq!(wide.validate(), Ok(()));
        assert_eq!(parse(&wide.to_xml()), Ok(wide));

        let deep = parse_str(&nested(MAX_DEPTH));
        assert!(deep.is_ok());
    }

    // ---- refused input: one test per kind -------------------------------------

    #[test]
    fn bad_utf8_is_rejected_with_the_offset_of_the_first_bad_byte() {
        assert_eq!(
            parse(b"<a v=\"\xff\"/>"),
            Err(StanzaError::BadUtf8 { offset: 6 })
        );
    }

    #[test]
    fn byte_order_mark_is_rejected_as_text_outside_root() {
        assert_eq!(
            parse(b"\xef\xbb\xbf<a/>"),
            Err(StanzaError::TextOutsideRoot { offset: 0 })
        );
    }

    #[test]
    fn xml_declaration_is_rejected_with_typed_error() {
        assert_eq!(
            parse_str(r#"<?xml version="1.0"?><a/>"#),
            Err(StanzaError::XmlDeclaration { offset: 0 })
        );
    }

    #[test]
    fn processing_instruction_is_rejected_with_typed_error() {
        assert_eq!(
            parse_str("<a><?php echo 1; ?></a>"),
            Err(StanzaError::ProcessingInstruction { offset: 3 })
        );
    }

    #[test]
    fn doctype_is_rejected_with_typed_error() {
        assert_eq!(
            parse_str("<!DOCTYPE a><a/>"),
            Err(StanzaError::Doctype { offset: 0 })
        );
    }

    #[test]
    fn comment_is_rejected_with_typed_error() {
        assert_eq!(
            parse_str("<a><!-- c --></a>"),
            Err(StanzaError::Comment { offset: 3 })
        );
    }

    #[test]
    fn cdata_is_rejected_with_typed_error() {
        assert_eq!(
            parse_str("<a><![CDATA[QUJD]]></a>"),
            Err(StanzaError::Cdata { offset: 3 })
        );
    }

    #[test]
    fn undefined_entity_in_attribute_is_rejected() {
        assert_eq!(
            parse_str("<a v='&nbsp;'/>"),
            Err(StanzaError::UndefinedEntity { offset: 0 })
        );
    }

    #[test]
    fn undefined_entity_in_text_is_rejected() {
        assert_eq!(
            parse_str("<a>&lol9;</a>"),
            Err(StanzaError::UndefinedEntity { offset: 3 })
        );
    }

    #[test]
    fn character_reference_to_a_forbidden_character_is_rejected() {
        assert_eq!(
            parse_str("<a v='&#0;'/>"),
            Err(StanzaError::BadReference { offset: 0 })
        );
        assert_eq!(
            parse_str("<a v='&#xD800;'/>"),
            Err(StanzaError::BadReference { offset: 0 })
        );
        assert_eq!(
            parse_str("<a v='&#+65;'/>"),
            Err(StanzaError::BadReference { offset: 0 })
        );
    }

    #[test]
    fn lone_ampersand_is_rejected_as_bad_reference() {
        assert_eq!(
            parse_str("<a v='a & b'/>"),
            Err(StanzaError::BadReference { offset: 0 })
        );
        assert!(matches!(
            parse_str("<a>x & y</a>"),
            Err(StanzaError::BadReference { .. })
        ));
    }

    #[test]
    fn unclosed_start_tag_is_rejected_as_malformed() {
        assert!(matches!(
            parse_str("<a><b"),
            Err(StanzaError::Malformed { .. })
        ));
    }

    #[test]
    fn unquoted_attribute_value_is_rejected_as_malformed() {
        assert_eq!(
            parse_str("<a v=1/>"),
            Err(StanzaError::Malformed { offset: 0 })
        );
    }

    #[test]
    fn mismatched_end_tag_is_rejected_as_unbalanced() {
        assert_eq!(
            parse_str("<a><b></a></b>"),
            Err(StanzaError::UnbalancedTags { offset: 6 })
        );
    }

    #[test]
    fn element_left_open_is_rejected_as_unbalanced() {
        assert_eq!(
            parse_str("<a><b/>"),
            Err(StanzaError::UnbalancedTags { offset: 7 })
        );
    }

    #[test]
    fn end_tag_without_start_is_rejected_as_unbalanced() {
        assert_eq!(
            parse_str("</a>"),
            Err(StanzaError::UnbalancedTags { offset: 0 })
        );
    }

    #[test]
    fn empty_or_blank_frame_is_rejected_as_missing_root() {
        assert_eq!(
            parse_str(""),
            Err(StanzaError::MissingRoot { frame_bytes: 0 })
        );
        assert_eq!(
            parse_str(" \n"),
            Err(StanzaError::MissingRoot { frame_bytes: 2 })
        );
    }

    #[test]
    fn text_before_root_is_rejected() {
        assert_eq!(
            parse_str("hi<a/>"),
            Err(StanzaError::TextOutsideRoot { offset: 0 })
        );
    }

    #[test]
    fn second_root_element_is_rejected_as_trailing_content() {
        assert_eq!(
            parse_str("<a/> <b/>"),
            Err(StanzaError::TrailingContent { offset: 5 })
        );
    }

    #[test]
    fn text_after_root_is_rejected_as_trailing_content() {
        assert_eq!(
            parse_str("<a/>x"),
            Err(StanzaError::TrailingContent { offset: 4 })
        );
    }

    #[test]
    fn duplicate_attribute_is_rejected() {
        assert_eq!(
            parse_str("<a id='1' id='2'/>"),
            Err(StanzaError::DuplicateAttribute { offset: Some(0) })
        );
    }

    #[test]
    fn invalid_tag_name_is_rejected() {
        assert_eq!(
            parse_str("<1a/>"),
            Err(StanzaError::InvalidName { offset: Some(0) })
        );
    }

    #[test]
    fn non_ascii_attribute_name_is_rejected() {
        assert_eq!(
            parse_str("<a \u{e9}='1'/>"),
            Err(StanzaError::InvalidName { offset: Some(0) })
        );
    }

    #[test]
    fn name_over_the_bound_is_rejected() {
        let tag = "t".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            parse_str(&format!("<{tag}/>")),
            Err(StanzaError::NameTooLong {
                offset: Some(0),
                len_bytes: MAX_NAME_BYTES + 1
            })
        );
    }

    #[test]
    fn attribute_value_over_the_bound_is_rejected() {
        // Escaped, the value is longer still; the bound counts unescaped bytes.
        let value = "&amp;".repeat(MAX_ATTR_VALUE_BYTES + 1);
        assert_eq!(
            parse_str(&format!("<a v='{value}'/>")),
            Err(StanzaError::AttrValueTooLong {
                offset: Some(0),
                len_bytes: MAX_ATTR_VALUE_BYTES + 1
            })
        );
    }

    #[test]
    fn raw_less_than_in_attribute_value_is_rejected() {
        assert_eq!(
            parse_str("<a v='<'/>"),
            Err(StanzaError::InvalidAttrValue { offset: Some(0) })
        );
    }

    #[test]
    fn raw_newline_or_control_character_in_attribute_value_is_rejected() {
        assert_eq!(
            parse_str("<a v='x\ny'/>"),
            Err(StanzaError::InvalidAttrValue { offset: Some(0) })
        );
        assert_eq!(
            parse_str("<a v='\u{1}'/>"),
            Err(StanzaError::InvalidAttrValue { offset: Some(0) })
        );
        assert_eq!(
            parse_str("<a v='&#10;'/>"),
            Err(StanzaError::InvalidAttrValue { offset: Some(0) })
        );
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_rejected() {
        let xml = nested(MAX_DEPTH + 1);
        assert_eq!(
            parse_str(&xml),
            Err(StanzaError::TooDeep {
                offset: Some(3 * MAX_DEPTH)
            })
        );
    }

    #[test]
    fn too_many_attributes_are_rejected() {
        let attrs: String = (0..=MAX_ATTRS_PER_ELEMENT)
            .map(|i| format!(" k{i}='x'"))
            .collect();
        assert_eq!(
            parse_str(&format!("<a{attrs}/>")),
            Err(StanzaError::TooManyAttributes { offset: Some(0) })
        );
    }

    #[test]
    fn too_many_children_are_rejected() {
        let xml = format!("<a>{}</a>", "<b/>".repeat(MAX_CHILDREN_PER_ELEMENT + 1));
        assert_eq!(
            parse_str(&xml),
            Err(StanzaError::TooManyChildren {
                offset: Some(3 + 4 * MAX_CHILDREN_PER_ELEMENT)
            })
        );
    }

    #[test]
    fn text_then_child_is_rejected_as_mixed_content() {
        assert_eq!(
            parse_str("<a>QUJD<b/></a>"),
            Err(StanzaError::MixedContent { offset: 7 })
        );
    }

    #[test]
    fn child_then_text_is_rejected_as_mixed_content() {
        assert_eq!(
            parse_str("<a><b/>QUJD</a>"),
            Err(StanzaError::MixedContent { offset: 7 })
        );
    }

    #[test]
    fn text_that_is_not_base64_is_rejected() {
        assert_eq!(
            parse_str("<enc>hello!</enc>"),
            Err(StanzaError::NotBase64 { offset: 5 })
        );
    }

    #[test]
    fn base64_without_padding_or_with_whitespace_is_rejected() {
        assert_eq!(
            parse_str("<enc>QQ</enc>"),
            Err(StanzaError::NotBase64 { offset: 5 })
        );
        assert_eq!(
            parse_str("<enc> QUJD</enc>"),
            Err(StanzaError::NotBase64 { offset: 5 })
        );
        // Non-zero trailing bits make `QR==` a second spelling of `QQ==`.
        assert_eq!(
            parse_str("<enc>QR==</enc>"),
            Err(StanzaError::NotBase64 { offset: 5 })
        );
    }

    #[test]
    fn require_attr_reports_the_missing_attribute() {
        let stanza = Stanza::new("ack").attr("id", "1");
        assert_eq!(stanza.require_attr("id"), Ok("1"));
        assert_eq!(
            stanza.require_attr("class"),
            Err(StanzaError::MissingAttribute {
                tag: "ack".into(),
                attribute: "class".into()
            })
        );
    }

    #[test]
    fn require_child_reports_the_missing_child() {
        let stanza = Stanza::new("iq").child(Stanza::new("count"));
        assert_eq!(stanza.require_child("count"), Ok(&Stanza::new("count")));
        assert_eq!(
            stanza.require_child("list"),
            Err(StanzaError::MissingChild {
                tag: "iq".into(),
                child: "list".into()
            })
        );
    }

    // ---- the model and its validation ----------------------------------------

    #[test]
    fn validate_rejects_empty_children_or_bytes_as_non_canonical() {
        let mut stanza = Stanza::new("a");
        stanza.content = Content::Bytes(Vec::new());
        assert_eq!(
            stanza.validate(),
            Err(StanzaError::NonCanonicalEmpty { tag: "a".into() })
        );
        stanza.content = Content::Children(Vec::new());
        assert_eq!(
            stanza.validate(),
            Err(StanzaError::NonCanonicalEmpty { tag: "a".into() })
        );
    }

    #[test]
    fn validate_applies_the_parser_rules_to_models() {
        let mut dup = Stanza::new("a");
        dup.attrs = vec![("k".into(), "1".into()), ("k".into(), "2".into())];
        assert_eq!(
            dup.validate(),
            Err(StanzaError::DuplicateAttribute { offset: None })
        );
        assert_eq!(
            Stanza::new("a b").validate(),
            Err(StanzaError::InvalidName { offset: None })
        );
        assert_eq!(
            Stanza::new("a").attr("v", "\u{FFFE}").validate(),
            Err(StanzaError::InvalidAttrValue { offset: None })
        );
        let deep = (0..MAX_DEPTH).fold(Stanza::new("a"), |inner, _| Stanza::new("a").child(inner));
        assert_eq!(deep.validate(), Err(StanzaError::TooDeep { offset: None }));
    }

    #[test]
    fn builder_keeps_attribute_keys_unique_and_in_first_position() {
        let stanza = Stanza::new("a")
            .attr("x", "1")
            .attr("y", "2")
            .attr("x", "3");
        assert_eq!(
            stanza.attrs,
            vec![("x".into(), "3".into()), ("y".into(), "2".into())]
        );
    }

    #[test]
    fn builder_bytes_and_child_replace_each_other() {
        let with_child = Stanza::new("a").bytes(vec![1]).child(Stanza::new("b"));
        assert_eq!(with_child.children(), &[Stanza::new("b")]);
        assert_eq!(with_child.payload(), None);
        let with_bytes = with_child.bytes(vec![2]);
        assert_eq!(with_bytes.payload(), Some(&[2][..]));
        assert!(with_bytes.children().is_empty());
        assert_eq!(with_bytes.bytes(Vec::new()).content, Content::Empty);
    }

    #[test]
    fn children_named_yields_every_match_in_order() {
        let stanza = Stanza::new("participants")
            .child(Stanza::new("to").attr("jid", "1"))
            .child(Stanza::new("other"))
            .child(Stanza::new("to").attr("jid", "2"));
        let jids: Vec<_> = stanza
            .children_named("to")
            .filter_map(|s| s.attr_value("jid"))
            .collect();
        assert_eq!(jids, vec!["1", "2"]);
        assert_eq!(stanza.child_named("other"), Some(&Stanza::new("other")));
    }

    #[test]
    fn every_error_has_a_distinct_snake_case_reason() {
        let errors = [
            StanzaError::BadUtf8 { offset: 0 },
            StanzaError::XmlDeclaration { offset: 0 },
            StanzaError::ProcessingInstruction { offset: 0 },
            StanzaError::Doctype { offset: 0 },
            StanzaError::Comment { offset: 0 },
            StanzaError::Cdata { offset: 0 },
            StanzaError::UndefinedEntity { offset: 0 },
            StanzaError::BadReference { offset: 0 },
            StanzaError::Malformed { offset: 0 },
            StanzaError::UnbalancedTags { offset: 0 },
            StanzaError::MissingRoot { frame_bytes: 0 },
            StanzaError::TextOutsideRoot { offset: 0 },
            StanzaError::TrailingContent { offset: 0 },
            StanzaError::DuplicateAttribute { offset: None },
            StanzaError::InvalidName { offset: None },
            StanzaError::NameTooLong {
                offset: None,
                len_bytes: 0,
            },
            StanzaError::AttrValueTooLong {
                offset: None,
                len_bytes: 0,
            },
            StanzaError::InvalidAttrValue { offset: None },
            StanzaError::TooDeep { offset: None },
            StanzaError::TooManyAttributes { offset: None },
            StanzaError::TooManyChildren { offset: None },
            StanzaError::MixedContent { offset: 0 },
            StanzaError::NotBase64 { offset: 0 },
            StanzaError::NonCanonicalEmpty { tag: "a".into() },
            StanzaError::MissingAttribute {
                tag: "a".into(),
                attribute: "b".into(),
            },
            StanzaError::MissingChild {
                tag: "a".into(),
                child: "b".into(),
            },
        ];
        let mut reasons: Vec<&str> = errors.iter().map(StanzaError::reason).collect();
        for (error, reason) in errors.iter().zip(&reasons) {
            assert!(
                reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
            assert!(!error.to_string().is_empty());
        }
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), errors.len());
    }

    // ---- stored hostile samples (tests/data/frames/README.md) -----------------

    #[test]
    fn stored_hostile_samples_are_rejected_with_their_typed_errors() {
        let cases: [(&str, &[u8], &str); 11] = [
            (
                "billion_laughs",
                include_bytes!("../../../../tests/data/frames/billion_laughs.bin"),
                "doctype",
            ),
            (
                "external_entity",
                include_bytes!("../../../../tests/data/frames/external_entity.bin"),
                "doctype",
            ),
            (
                "doctype",
                include_bytes!("../../../../tests/data/frames/doctype.bin"),
                "doctype",
            ),
            (
                "xml_declaration",
                include_bytes!("../../../../tests/data/frames/xml_declaration.bin"),
                "xml_declaration",
            ),
            (
                "undefined_entity",
                include_bytes!("../../../../tests/data/frames/undefined_entity.bin"),
                "undefined_entity",
            ),
            (
                "deep_nesting",
                include_bytes!("../../../../tests/data/frames/deep_nesting.bin"),
                "too_deep",
            ),
            (
                "bad_utf8",
                include_bytes!("../../../../tests/data/frames/bad_utf8.bin"),
                "bad_utf8",
            ),
            (
                "too_many_children",
                include_bytes!("../../../../tests/data/frames/too_many_children.bin"),
                "too_many_children",
            ),
            (
                "comment_before_root",
                include_bytes!("../../../../tests/data/frames/comment_before_root.bin"),
                "comment",
            ),
            (
                "cdata_payload",
                include_bytes!("../../../../tests/data/frames/cdata_payload.bin"),
                "cdata",
            ),
            (
                "mixed_content",
                include_bytes!("../../../../tests/data/frames/mixed_content.bin"),
                "mixed_content",
            ),
        ];
        for (name, bytes, reason) in cases {
            let result = parse(bytes).map_err(|e| e.reason());
            assert_eq!(result, Err(reason), "sample {name}");
        }
    }

    #[test]
    fn stored_bad_utf8_sample_reports_the_first_bad_byte() {
        let sample = include_bytes!("../../../../tests/data/frames/bad_utf8.bin");
        assert_eq!(parse(sample), Err(StanzaError::BadUtf8 { offset: 13 }));
    }

    // ---- properties -------------------------------------------------------------

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_.:-]{0,11}"
    }

    /// Any character, with the XML specials made frequent and the characters an
    /// attribute value may not hold replaced.
    fn value_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec!['<', '>', '&', '"', '\'', ';', '#', ' ']),
        ]
        .prop_map(|c| if is_attr_value_char(c) { c } else { '?' })
    }

    fn attr_value() -> impl Strategy<Value = String> {
        prop::collection::vec(value_char(), 0..24).prop_map(|chars| chars.into_iter().collect())
    }

    fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((name(), attr_value()), 0..5).prop_map(|mut attrs| {
            let mut seen = std::collections::HashSet::new();
            attrs.retain(|(k, _)| seen.insert(k.clone()));
            attrs
        })
    }

    fn leaf() -> impl Strategy<Value = Stanza> {
        let content = prop_oneof![
            Just(Content::Empty),
            prop::collection::vec(any::<u8>(), 1..48).prop_map(Content::Bytes),
        ];
        (name(), attrs(), content).prop_map(|(tag, attrs, content)| Stanza {
            tag,
            attrs,
            content,
        })
    }

    fn stanza() -> impl Strategy<Value = Stanza> {
        leaf().prop_recursive(5, 48, 6, |inner| {
            (name(), attrs(), prop::collection::vec(inner, 1..6)).prop_map(
                |(tag, attrs, children)| Stanza {
                    tag,
                    attrs,
                    content: Content::Children(children),
                },
            )
        })
    }

    /// Bytes that look like XML often enough to reach deep into the parser.
    fn xmlish_bytes() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            prop::sample::select(vec![
                "<a>",
                "</a>",
                "<b/>",
                "<a x='1'>",
                " y=\"2\"",
                "&amp;",
                "&#65;",
                "&x;",
                "QUJD",
                "<!--",
                "-->",
                "<![CDATA[",
                "]]>",
                "<?",
                "?>",
                "<!DOCTYPE",
                " ",
                "\n",
                "=",
                "'",
                "\"",
                ">",
                "<",
                "&",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ];
        prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
    }

    proptest! {
        #[test]
        fn every_valid_stanza_round_trips_through_xml(stanza in stanza()) {
            prop_assert_eq!(stanza.validate(), Ok(()));
            prop_assert_eq!(parse(&stanza.to_xml()), Ok(stanza));
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(stanza) = parse(&bytes) {
                prop_assert_eq!(stanza.validate(), Ok(()));
                prop_assert_eq!(parse(&stanza.to_xml()), Ok(stanza));
            }
        }

        #[test]
        fn whatever_parses_is_valid_and_round_trips(bytes in xmlish_bytes()) {
            if let Ok(stanza) = parse(&bytes) {
                prop_assert_eq!(stanza.validate(), Ok(()));
                prop_assert_eq!(parse(&stanza.to_xml()), Ok(stanza));
            }
        }
    }
}
