//! Line and column of every value in a rules file, keyed by its document
//! path, so validation errors found after serde has run can still point at
//! the text. serde_yaml keeps no positions, so the file is parsed a second
//! time with yaml-rust2's event parser, which reports a marker per event.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a document path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path such as `rules[2].tags.include[1]` or `registries."127.0.0.1:5001".tls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct YamlPath(Vec<Segment>);

impl YamlPath {
    pub fn root() -> Self {
        YamlPath(Vec::new())
    }

    /// Appends a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_string()));
        YamlPath(segments)
    }

    /// Appends a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        YamlPath(segments)
    }

    fn parent(&self) -> Option<Self> {
        let mut segments = self.0.clone();
        segments.pop()?;
        Some(YamlPath(segments))
    }
}

impl std::fmt::Display for YamlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        write!(f, ".")?;
                    }
                    let plain = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if plain {
                        write!(f, "{key}")?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Maximum nesting of mappings and sequences in a rules file, the
/// top-level mapping included. Valid rules nest at most five levels, as in
/// `rules[0].tags.include[0]`. The limit stays below serde_yaml's own limit
/// of 128, so this check, which reports a position, fires first.
pub const MAX_NESTING: usize = 64;

/// Position, 1-based, of the mapping or sequence that opens nesting level
/// [`MAX_NESTING`] + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestingTooDeep {
    pub line: usize,
    pub column: usize,
}

/// Positions of the values of one document, 1-based line and column.
#[derive(Debug, Default)]
pub struct Locations {
    values: HashMap<YamlPath, (usize, usize)>,
}

impl Locations {
    /// Parses the first document of `text`, keeping the position of every
    /// value. A file that is not valid YAML yields the positions read
    /// before the syntax error. Nesting deeper than [`MAX_NESTING`] is an
    /// error, so the caller can reject the file before serde_yaml parses it.
    pub fn parse(text: &str) -> Result<Self, NestingTooDeep> {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // `Parser::load` recurses once per nesting level and overflows the
        // stack at a few thousand levels, so events are pulled one at a
        // time and the walker keeps its own stack of frames.
        while let Ok((event, mark)) = parser.next_token() {
            match event {
                Event::DocumentEnd | Event::StreamEnd => break,
                Event::MappingStart(..) | Event::SequenceStart(..)
                    if walker.frames.len() >= MAX_NESTING =>
                {
                    return Err(NestingTooDeep {
                        line: mark.line(),
                        column: mark.col() + 1,
                    });
                }
                _ => walker.on_event(event, mark),
            }
        }
        Ok(Locations {
            values: walker.values,
        })
    }

    /// Position of the value at `path`, else of its nearest ancestor that
    /// is written in the file (a missing field points at its mapping).
    pub fn find(&self, path: &YamlPath) -> Option<(usize, usize)> {
        let mut current = Some(path.clone());
        while let Some(path) = current {
            if let Some(location) = self.values.get(&path) {
                return Some(*location);
            }
            current = path.parent();
        }
        None
    }
}

/// State of the walker inside one open mapping or sequence.
enum Frame {
    /// A mapping, with the key just read when its value comes next.
    Mapping(Option<String>),
    /// A sequence, with the index of the next item.
    Sequence(usize),
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    path: Vec<Segment>,
    values: HashMap<YamlPath, (usize, usize)>,
}

impl Walker {
    /// Records a value starting at `mark` under the current frame. Returns
    /// false when the event was a mapping key instead of a value.
    fn begin_value(&mut self, key_text: Option<&str>, mark: Marker) -> bool {
        let segment = match self.frames.last_mut() {
            None => None,
            Some(Frame::Mapping(pending)) => match pending.take() {
                Some(key) => Some(Segment::Key(key)),
                None => {
                    // Keys that are not scalars (rare) are recorded as empty.
                    *pending = Some(key_text.unwrap_or_default().to_string());
                    self.move_mapping_to(mark);
                    return false;
                }
            },
            Some(Frame::Sequence(next)) => {
                *next += 1;
                Some(Segment::Index(*next - 1))
            }
        };
        let mut path = self.path.clone();
        path.extend(segment);
        // yaml-rust2 counts lines from 1 and columns from 0.
        self.values
            .insert(YamlPath(path), (mark.line(), mark.col() + 1));
        true
    }

    /// yaml-rust2 marks a block mapping after its first key, so the
    /// mapping's position is moved back to its first key.
    fn move_mapping_to(&mut self, mark: Marker) {
        let key = (mark.line(), mark.col() + 1);
        if let Some(location) = self.values.get_mut(&YamlPath(self.path.clone())) {
            if key < *location {
                *location = key;
            }
        }
    }

    fn open(&mut self, frame: Frame, mark: Marker) {
        let segment = match self.frames.last() {
            Some(Frame::Mapping(Some(key))) => Some(Segment::Key(key.clone())),
            Some(Frame::Sequence(next)) => Some(Segment::Index(*next)),
            _ => None,
        };
        if self.begin_value(None, mark) {
            self.path.extend(segment);
        } else {
            // A mapping or sequence used as a key: give it a path of its own.
            self.path.push(Segment::Key(String::new()));
        }
        self.frames.push(frame);
    }

    fn close(&mut self) {
        self.frames.pop();
        if !self.frames.is_empty() {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => {
                self.begin_value(Some(&text), mark);
            }
            Event::Alias(_) => {
                self.begin_value(None, mark);
            }
            Event::MappingStart(..) => self.open(Frame::Mapping(None), mark),
            Event::SequenceStart(..) => self.open(Frame::Sequence(0), mark),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "registries:\n  127.0.0.1:5001:\n    tls: nope\nrules:\n  - name: a\n    source: x\n    tags:\n      include: [\"v*\", \"b[\"]\n  - name: b\n";

    #[test]
    fn values_have_line_and_column() {
        let locations = Locations::parse(TEXT).unwrap();
        let root = YamlPath::root();
        let tls = root.key("registries").key("127.0.0.1:5001").key("tls");
        assert_eq!(locations.find(&tls), Some((3, 10)));
        let source = root.key("rules").index(0).key("source");
        assert_eq!(locations.find(&source), Some((6, 13)));
        let glob = root
            .key("rules")
            .index(0)
            .key("tags")
            .key("include")
            .index(1);
        assert_eq!(locations.find(&glob), Some((8, 23)));
    }

    #[test]
    fn missing_value_points_at_parent() {
        let locations = Locations::parse(TEXT).unwrap();
        let missing = YamlPath::root().key("rules").index(1).key("source");
        assert_eq!(locations.find(&missing), Some((9, 5)));
    }

    #[test]
    fn paths_display_like_the_document() {
        let path = YamlPath::root()
            .key("registries")
            .key("127.0.0.1:5001")
            .key("tls");
        assert_eq!(path.to_string(), "registries.\"127.0.0.1:5001\".tls");
        let path = YamlPath::root().key("rules").index(2).key("source");
        assert_eq!(path.to_string(), "rules[2].source");
    }
}
