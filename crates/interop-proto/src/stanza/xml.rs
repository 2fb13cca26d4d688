//! The textual `interop-xml/1` encoding of the stanza model: the canonical writer
//! ([`Stanza::to_xml`]) and the strict parser ([`parse`]) with the rules and bounds the
//! module documentation lists. A binary encoding goes beside it as a file of its own.

use super::*;

impl Stanza {
    /// The canonical XML text of this stanza: no declaration, no whitespace,
    /// attribute values escaped with the five predefined entities, bytes as
    /// standard base64. The caller frames it with [`crate::frame::encode_frame`].
    pub fn to_xml(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_xml(&mut out);
        out
    }

    pub(super) fn write_xml(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        out.extend_from_slice(self.tag.as_bytes());
        for (key, value) in &self.attrs {
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_into(value, out);
            out.push(b'"');
        }
        match &self.content {
            Content::Children(children) if !children.is_empty() => {
                out.push(b'>');
                for child in children {
                    child.write_xml(out);
                }
                self.write_end(out);
            }
            Content::Bytes(bytes) if !bytes.is_empty() => {
                out.push(b'>');
                out.extend_from_slice(BASE64.encode(bytes).as_bytes());
                self.write_end(out);
            }
            Content::Empty | Content::Children(_) | Content::Bytes(_) => {
                out.extend_from_slice(b"/>");
            }
        }
    }

    pub(super) fn write_end(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.tag.as_bytes());
        out.push(b'>');
    }
}

/// Writes `value` with the five XML specials replaced by predefined entities.
pub(super) fn escape_into(value: &str, out: &mut Vec<u8>) {
    for byte in value.bytes() {
        match byte {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            other => out.push(other),
        }
    }
}

/// XML's white space: space, tab, CR, LF.
pub(super) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// XML 1.0's `Char` production.
pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// A character allowed in an attribute value: an XML character other than the
/// white space that attribute-value normalisation would turn into a space.
pub(super) fn is_attr_value_char(c: char) -> bool {
    is_xml_char(c) && !matches!(c, '\t' | '\n' | '\r')
}

pub(super) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

pub(super) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

pub(super) fn check_name(name: &str, offset: Option<usize>) -> Result<(), StanzaError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(StanzaError::NameTooLong {
            offset,
            len_bytes: name.len(),
        });
    }
    match name.as_bytes().split_first() {
        Some((&first, rest)) if is_name_start(first) && rest.iter().all(|&b| is_name_byte(b)) => {
            Ok(())
        }
        _ => Err(StanzaError::InvalidName { offset }),
    }
}

pub(super) fn check_attr_value(value: &str, offset: Option<usize>) -> Result<(), StanzaError> {
    if value.len() > MAX_ATTR_VALUE_BYTES {
        return Err(StanzaError::AttrValueTooLong {
            offset,
            len_bytes: value.len(),
        });
    }
    if value.chars().all(is_attr_value_char) {
        Ok(())
    } else {
        Err(StanzaError::InvalidAttrValue { offset })
    }
}

/// Resolves the name between `&` and `;` to a character: one of the five predefined
/// entities, or a decimal (`#60`) or hexadecimal (`#x3C`) reference to an XML char.
pub(super) fn resolve_reference(name: &str, offset: usize) -> Result<char, StanzaError> {
    match name {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "quot" => return Ok('"'),
        "apos" => return Ok('\''),
        _ => {}
    }
    let bad = StanzaError::BadReference { offset };
    if let Some(number) = name.strip_prefix('#') {
        let (digits, radix) = match number.strip_prefix('x') {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        // `from_str_radix` would accept a leading `+`; XML does not.
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return Err(bad);
        }
        return u32::from_str_radix(digits, radix)
            .ok()
            .and_then(char::from_u32)
            .filter(|&c| is_xml_char(c))
            .ok_or(bad);
    }
    if check_name(name, None).is_ok() {
        Err(StanzaError::UndefinedEntity { offset })
    } else {
        Err(bad)
    }
}

/// Unescapes a raw attribute value, enforcing the value rules.
pub(super) fn unescape_attr_value(raw: &str, offset: usize) -> Result<String, StanzaError> {
    let mut value = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find(['&', '<']) {
        // INVARIANT: `find` returns the index of a matched char, a char boundary.
        let (literal, tail) = rest.split_at(amp);
        value.push_str(literal);
        let Some(after_amp) = tail.strip_prefix('&') else {
            // A raw `<` is not allowed in an attribute value.
            return Err(StanzaError::InvalidAttrValue {
                offset: Some(offset),
            });
        };
        let Some((name, after)) = after_amp.split_once(';') else {
            return Err(StanzaError::BadReference { offset });
        };
        value.push(resolve_reference(name, offset)?);
        rest = after;
    }
    value.push_str(rest);
    check_attr_value(&value, Some(offset))?;
    Ok(value)
}

/// An element whose start tag has been read and whose end tag has not.
pub(super) struct OpenElement {
    tag: String,
    attrs: Vec<(String, String)>,
    children: Vec<Stanza>,
    /// Text collected so far, references already resolved.
    text: String,
    /// Where the first non-whitespace text started, if any has been seen.
    text_offset: Option<usize>,
}

impl OpenElement {
    fn close(self) -> Result<Stanza, StanzaError> {
        let content = match self.text_offset {
            _ if !self.children.is_empty() => Content::Children(self.children),
            None => Content::Empty,
            Some(offset) => match BASE64.decode(self.text.as_bytes()) {
                Ok(bytes) if !bytes.is_empty() => Content::Bytes(bytes),
                Ok(_) | Err(_) => return Err(StanzaError::NotBase64 { offset }),
            },
        };
        Ok(Stanza {
            tag: self.tag,
            attrs: self.attrs,
            content,
        })
    }
}

/// Parser state for one frame: the open elements and the finished root.
pub(super) struct Builder {
    open: Vec<OpenElement>,
    root: Option<Stanza>,
}

impl Builder {
    /// Opens an element read at `offset`, checking where it may stand.
    fn open(&mut self, start: &BytesStart<'_>, offset: usize) -> Result<OpenElement, StanzaError> {
        if self.root.is_some() {
            return Err(StanzaError::TrailingContent { offset });
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(StanzaError::TooDeep {
                offset: Some(offset),
            });
        }
        if let Some(parent) = self.open.last() {
            if parent.text_offset.is_some() {
                return Err(StanzaError::MixedContent { offset });
            }
            if parent.children.len() >= MAX_CHILDREN_PER_ELEMENT {
                return Err(StanzaError::TooManyChildren {
                    offset: Some(offset),
                });
            }
        }
        let tag = start.name().as_ref().to_owned();
        check_name(&tag, Some(offset))?;
        let mut attrs: Vec<(String, String)> = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|error| match error {
                AttrError::Duplicated(..) => StanzaError::DuplicateAttribute {
                    offset: Some(offset),
                },
                _ => StanzaError::Malformed { offset },
            })?;
            if attrs.len() >= MAX_ATTRS_PER_ELEMENT {
                return Err(StanzaError::TooManyAttributes {
                    offset: Some(offset),
                });
            }
            let key = attribute.key.as_ref();
            check_name(key, Some(offset))?;
            let value = unescape_attr_value(&attribute.value, offset)?;
            attrs.push((key.to_owned(), value));
        }
        Ok(OpenElement {
            tag,
            attrs,
            children: Vec::new(),
            text: String::new(),
            text_offset: None,
        })
    }

    /// Places a finished element under its parent, or as the root.
    fn attach(&mut self, stanza: Stanza) {
        match self.open.last_mut() {
            Some(parent) => parent.children.push(stanza),
            None => self.root = Some(stanza),
        }
    }

    /// Adds text (already unescaped) read at `offset`.
    fn text(&mut self, text: &str, offset: usize) -> Result<(), StanzaError> {
        let blank = text.chars().all(is_xml_space);
        let Some(element) = self.open.last_mut() else {
            return match (blank, self.root.is_some()) {
                (true, _) => Ok(()),
                (false, true) => Err(StanzaError::TrailingContent { offset }),
                (false, false) => Err(StanzaError::TextOutsideRoot { offset }),
            };
        };
        if !blank {
            if !element.children.is_empty() {
                return Err(StanzaError::MixedContent { offset });
            }
            element.text_offset.get_or_insert(offset);
        }
        element.text.push_str(text);
        Ok(())
    }
}

/// Parses one frame's payload into a stanza, enforcing every rule in the module doc.
///
/// The result always passes [`Stanza::validate`].
pub fn parse(frame: &[u8]) -> Result<Stanza, StanzaError> {
    if frame.starts_with("\u{FEFF}".as_bytes()) {
        return Err(StanzaError::TextOutsideRoot { offset: 0 });
    }
    let text = std::str::from_utf8(frame).map_err(|error| StanzaError::BadUtf8 {
        offset: error.valid_up_to(),
    })?;
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.expand_empty_elements = false;
    config.trim_text(false);

    let mut builder = Builder {
        open: Vec::new(),
        root: None,
    };
    loop {
        let offset = position(reader.buffer_position());
        let event = reader
            .read_event()
            .map_err(|error| map_xml_error(&error, position(reader.error_position())))?;
        match event {
            Event::Decl(_) => return Err(StanzaError::XmlDeclaration { offset }),
            Event::PI(_) => return Err(StanzaError::ProcessingInstruction { offset }),
            Event::DocType(_) => return Err(StanzaError::Doctype { offset }),
            Event::Comment(_) => return Err(StanzaError::Comment { offset }),
            Event::CData(_) => return Err(StanzaError::Cdata { offset }),
            Event::Start(start) => {
                let element = builder.open(&start, offset)?;
                builder.open.push(element);
            }
            Event::Empty(start) => {
                let element = builder.open(&start, offset)?;
                builder.attach(element.close()?);
            }
            Event::End(_) => {
                // The reader has already matched the end tag's name to the open one.
                let element = builder
                    .open
                    .pop()
                    .ok_or(StanzaError::UnbalancedTags { offset })?;
                builder.attach(element.close()?);
            }
            Event::Text(raw) => builder.text(&raw, offset)?,
            Event::GeneralRef(reference) => {
                let c = resolve_reference(&reference, offset)?;
                builder.text(c.encode_utf8(&mut [0; 4]), offset)?;
            }
            Event::Eof => break,
        }
    }
    if !builder.open.is_empty() {
        return Err(StanzaError::UnbalancedTags {
            offset: frame.len(),
        });
    }
    builder.root.ok_or(StanzaError::MissingRoot {
        frame_bytes: frame.len(),
    })
}

/// A reader position as a frame offset. Frames are far smaller than `usize::MAX`.
pub(super) fn position(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

pub(super) fn map_xml_error(error: &XmlError, offset: usize) -> StanzaError {
    match error {
        XmlError::IllFormed(
            IllFormedError::MismatchedEndTag { .. }
            | IllFormedError::UnmatchedEndTag(_)
            | IllFormedError::MissingEndTag(_),
        ) => StanzaError::UnbalancedTags { offset },
        XmlError::IllFormed(IllFormedError::UnclosedReference) | XmlError::Escape(_) => {
            StanzaError::BadReference { offset }
        }
        XmlError::IllFormed(
            IllFormedError::MissingDeclVersion(_) | IllFormedError::UnknownVersion,
        ) => StanzaError::XmlDeclaration { offset },
        XmlError::IllFormed(IllFormedError::MissingDoctypeName) => StanzaError::Doctype { offset },
        XmlError::IllFormed(IllFormedError::DoubleHyphenInComment) => {
            StanzaError::Comment { offset }
        }
        XmlError::InvalidAttr(AttrError::Duplicated(..)) => StanzaError::DuplicateAttribute {
            offset: Some(offset),
        },
        _ => StanzaError::Malformed { offset },
    }
}
