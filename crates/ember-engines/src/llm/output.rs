//! Turns a sequence's generated text, piece by piece, into what the client sees: content text
//! with stop sequences cut (and never emitted, even split across pieces), and tool calls taken
//! out of the text and reported as a start (id and name), argument fragments and the parsed
//! call. Calls are the Hermes/Qwen format (`<tool_call>{"name": ..., "arguments": {...}}
//! </tool_call>`), or, at the very start of an answer, the same JSON objects bare or in a
//! ```` ```json ```` fence, one after another or separated by commas (small models often drop
//! the tags). No markup of a call reaches the client; JSON that turns out not to be a call of
//! one of the tools is given back as text.

use ember_core::tools::{ToolCall, new_call_id};

pub const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    Text(String),
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    CallArguments {
        index: usize,
        fragment: String,
    },
    /// A call is complete.
    CallEnd(ToolCall),
    /// A stop sequence appeared: the generation ends (its text before the stop was sent).
    Stopped,
}

/// An open call: its text so far, and how far its arguments were reported.
struct OpenCall {
    text: String,
    /// Opened by `<tool_call>` (ends at `</tool_call>`), else a bare JSON object (ends with it).
    tagged: bool,
    /// What opened an untagged call (a fence line), given back if it is no call after all.
    opening: String,
    /// The grammar for this call's JSON has run to its end.
    grammar_done: bool,
    id: String,
    /// Byte offset in `text` where the arguments value begins, once the name is known.
    arguments_start: Option<usize>,
    /// Bytes of the arguments reported so far (counted from `arguments_start`).
    reported: usize,
    arguments_done: bool,
}

pub struct OutputParser {
    /// The callable tools' names; empty: no tool calls are parsed.
    tools: Vec<String>,
    /// The untagged calls at the answer's start are in a fence: its close is layout.
    bare_fenced: bool,
    /// An untagged call just ended: another may follow, after layout and a comma.
    between_bare_calls: bool,
    stop: Vec<String>,
    /// Text received but not yet sent: it may be the start of a stop sequence or of a call.
    pending: String,
    call: Option<OpenCall>,
    calls: Vec<ToolCall>,
    /// Content text sent so far.
    content: String,
    stopped: bool,
}

impl OutputParser {
    /// `tools`: parse tool calls out of the text. `inside_call`: the prompt already opened a call
    /// (a forced tool choice), so the output starts with the call's JSON.
    pub fn new(tools: Vec<String>, stop: Vec<String>, inside_call: bool) -> OutputParser {
        OutputParser {
            tools,
            bare_fenced: false,
            between_bare_calls: false,
            stop,
            pending: String::new(),
            call: inside_call.then(|| open_call(true, String::new())),
            calls: Vec::new(),
            content: String::new(),
            stopped: false,
        }
    }

    /// Whether a `<tool_call>` is open whose JSON has not been generated yet: the tool-call
    /// grammar applies from here.
    pub fn call_needs_grammar(&self) -> bool {
        self.call
            .as_ref()
            .is_some_and(|c| c.tagged && !c.grammar_done)
    }

    /// The grammar has produced the open call's whole JSON.
    pub fn call_grammar_done(&mut self) {
        if let Some(call) = self.call.as_mut() {
            call.grammar_done = true;
        }
    }

    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    pub fn content(&self) -> &str {
        &self.content
    }

    /// Takes the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> Vec<OutputEvent> {
        let mut events = Vec::new();
        if self.stopped {
            return events;
        }
        self.pending.push_str(piece);
        loop {
            let progressed = match self.call.is_some() {
                true => self.advance_call(&mut events),
                false => self.advance_text(&mut events),
            };
            if !progressed || self.stopped {
                return events;
            }
        }
    }

    /// The generation ended: whatever was held back is sent, an unclosed call is closed.
    pub fn finish(&mut self) -> Vec<OutputEvent> {
        let mut events = Vec::new();
        if self.stopped {
            return events;
        }
        if let Some(call) = self.call.take() {
            let text = call.text.clone() + &self.pending;
            self.pending.clear();
            self.close_call(call, &text, &mut events);
        }
        let rest = std::mem::take(&mut self.pending);
        // Whitespace after the last call is layout.
        if !rest.trim().is_empty() || self.calls.is_empty() {
            self.send_text(rest, &mut events);
        }
        events
    }

    /// Content mode: sends text up to where a stop sequence or a call might begin.
    fn advance_text(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        if let Some(at) = self.first_stop() {
            let before = self.pending[..at].to_owned();
            self.pending.clear();
            self.send_text(before, events);
            self.stopped = true;
            events.push(OutputEvent::Stopped);
            return false;
        }
        let tools = !self.tools.is_empty();
        if self.between_bare_calls {
            let rest = self.pending.trim_start();
            let rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
            let partial_fence = FENCE.starts_with(rest) && rest.len() < FENCE.len();
            if rest.is_empty() || (self.bare_fenced && partial_fence) {
                return false;
            }
            self.between_bare_calls = false;
            let layout = self.pending.len() - rest.len();
            if rest.starts_with('{') {
                let opening: String = self.pending.drain(..layout).collect();
                self.call = Some(open_call(false, opening));
                return true;
            }
            if self.bare_fenced && rest.starts_with(FENCE) {
                self.pending.drain(..layout + FENCE.len());
            }
        }
        if tools && let Some(at) = self.pending.find(CALL_OPEN) {
            let before = self.pending[..at].trim_end().to_owned();
            self.pending.drain(..at + CALL_OPEN.len());
            // Whitespace before a call is layout, not content.
            self.send_text(before, events);
            self.call = Some(open_call(true, String::new()));
            return true;
        }
        if tools && self.content.is_empty() && self.calls.is_empty() {
            match bare_call_opening(&self.pending) {
                Opening::Undecided => return false,
                Opening::Call(length) => {
                    let opening: String = self.pending.drain(..length).collect();
                    self.bare_fenced = opening.contains(FENCE);
                    self.call = Some(open_call(false, opening));
                    return true;
                }
                Opening::None => {}
            }
        }
        let mut markers: Vec<&str> = self.stop.iter().map(String::as_str).collect();
        if tools {
            markers.push(CALL_OPEN);
        }
        let mut send_up_to = self.pending.len() - held_back(&self.pending, &markers);
        if tools {
            // Trailing whitespace waits: it is layout if a call follows.
            send_up_to = self.pending[..send_up_to].trim_end().len();
        }
        let sendable: String = self.pending.drain(..send_up_to).collect();
        self.send_text(sendable, events);
        false
    }

    /// Call mode: learns the name, reports argument fragments, closes the call at its end tag
    /// (or, untagged, where its JSON object ends).
    fn advance_call(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        let mut call = self.call.take().expect("in a call");
        let close = match call.tagged {
            true => self.pending.find(CALL_CLOSE),
            false => None,
        };
        let take = match call.tagged {
            true => close.unwrap_or(self.pending.len() - held_back(&self.pending, &[CALL_CLOSE])),
            false => self.pending.len(),
        };
        call.text.extend(self.pending.drain(..take));
        let index = self.calls.len();
        if call.arguments_start.is_none()
            && let Some((name, start)) = name_and_arguments_start(&call.text)
            && self.tools.contains(&name)
        {
            call.arguments_start = Some(start);
            events.push(OutputEvent::CallStart {
                index,
                id: call.id.clone(),
                name,
            });
        }
        if let Some(start) = call.arguments_start
            && !call.arguments_done
        {
            let arguments = &call.text[start..];
            let (end, done) = json_value_end(arguments);
            if end > call.reported {
                events.push(OutputEvent::CallArguments {
                    index,
                    fragment: arguments[call.reported..end].to_owned(),
                });
                call.reported = end;
            }
            call.arguments_done = done;
        }
        if close.is_some() {
            self.pending.drain(..CALL_CLOSE.len());
            let text = call.text.clone();
            self.close_call(call, &text, events);
            return true;
        }
        if !call.tagged {
            let start = call.text.len() - call.text.trim_start().len();
            let (end, done) = json_value_end(&call.text[start..]);
            if done {
                // What follows the object is another call or text again.
                let rest = call.text.split_off(start + end);
                self.pending.insert_str(0, &rest);
                self.between_bare_calls = true;
                let text = call.text.clone();
                self.close_call(call, &text, events);
                return true;
            }
        }
        self.call = Some(call);
        false
    }

    /// Parses a call's JSON; a call that does not parse is given back as text, so nothing the
    /// model wrote is lost.
    fn close_call(&mut self, call: OpenCall, text: &str, events: &mut Vec<OutputEvent>) {
        let parsed: Option<ToolCall> = serde_json::from_str::<serde_json::Value>(text.trim())
            .ok()
            .and_then(|value| {
                let name = value.get("name")?.as_str()?.to_owned();
                let arguments = value.get("arguments")?.clone();
                if !self.tools.contains(&name) || !arguments.is_object() {
                    return None;
                }
                Some(ToolCall {
                    id: call.id.clone(),
                    name,
                    arguments,
                })
            });
        match parsed {
            Some(tool_call) => {
                if call.arguments_start.is_none() {
                    events.push(OutputEvent::CallStart {
                        index: self.calls.len(),
                        id: tool_call.id.clone(),
                        name: tool_call.name.clone(),
                    });
                }
                if !call.arguments_done {
                    let arguments = tool_call.arguments.to_string();
                    let fragment = match call.reported {
                        0 => arguments,
                        _ => String::new(),
                    };
                    if !fragment.is_empty() {
                        events.push(OutputEvent::CallArguments {
                            index: self.calls.len(),
                            fragment,
                        });
                    }
                }
                self.calls.push(tool_call.clone());
                events.push(OutputEvent::CallEnd(tool_call));
            }
            None => {
                self.between_bare_calls = false;
                let opening = match call.tagged {
                    true => CALL_OPEN,
                    false => &call.opening,
                };
                self.send_text(format!("{opening}{text}"), events);
            }
        }
    }

    fn send_text(&mut self, text: String, events: &mut Vec<OutputEvent>) {
        if text.is_empty() {
            return;
        }
        self.content.push_str(&text);
        events.push(OutputEvent::Text(text));
    }

    fn first_stop(&self) -> Option<usize> {
        self.stop.iter().filter_map(|s| self.pending.find(s)).min()
    }
}

fn open_call(tagged: bool, opening: String) -> OpenCall {
    OpenCall {
        text: String::new(),
        tagged,
        opening,
        grammar_done: false,
        id: new_call_id(),
        arguments_start: None,
        reported: 0,
        arguments_done: false,
    }
}

const FENCE: &str = "```";

enum Opening {
    /// Not a call.
    None,
    /// Could still become a call: wait for more text.
    Undecided,
    /// A call's JSON begins after this many bytes (leading whitespace and a fence line).
    Call(usize),
}

/// Whether an answer's first text opens an untagged call: `{`, or a ```` ```json ```` (or bare
/// ```` ``` ````) fence line followed by `{`.
fn bare_call_opening(text: &str) -> Opening {
    let trimmed = text.trim_start();
    let lead = text.len() - trimmed.len();
    if trimmed.is_empty() {
        return Opening::Undecided;
    }
    if trimmed.starts_with('{') {
        return Opening::Call(lead);
    }
    for fence in ["```json\n", "```\n"] {
        if fence.starts_with(trimmed) {
            return Opening::Undecided;
        }
        if let Some(after) = trimmed.strip_prefix(fence) {
            let json = after.trim_start();
            return match json.is_empty() {
                true => Opening::Undecided,
                false if json.starts_with('{') => Opening::Call(text.len() - json.len()),
                false => Opening::None,
            };
        }
    }
    Opening::None
}

/// Bytes at the end of `text` that could be the start of one of `markers`.
fn held_back(text: &str, markers: &[&str]) -> usize {
    markers
        .iter()
        .flat_map(|marker| {
            (1..marker.len())
                .rev()
                .filter(|&n| marker.is_char_boundary(n) && text.ends_with(&marker[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

/// In a call's text so far, `{"name": "<name>", "arguments": `: the name and where the
/// arguments value begins.
fn name_and_arguments_start(text: &str) -> Option<(String, usize)> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest
        .strip_prefix("\"name\"")?
        .trim_start()
        .strip_prefix(':')?;
    let rest = rest.trim_start().strip_prefix('"')?;
    let name_end = rest.find('"')?;
    let name = rest[..name_end].to_owned();
    let rest = rest[name_end + 1..]
        .trim_start()
        .strip_prefix(',')?
        .trim_start();
    let rest = rest
        .strip_prefix("\"arguments\"")?
        .trim_start()
        .strip_prefix(':')?;
    let value = rest.trim_start();
    // Wait for the value's first character, so a fragment never starts with layout.
    if value.is_empty() {
        return None;
    }
    Some((name, text.len() - value.len()))
}

/// How many bytes of `text` belong to the JSON value it starts with, and whether that value is
/// complete. Counts brackets outside strings.
fn json_value_end(text: &str) -> (usize, bool) {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return (i + 1, true);
                }
            }
            _ => {}
        }
    }
    (text.len(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<String> {
        vec!["weather".into(), "time".into()]
    }

    /// Feeds `text` cut at `cuts` and returns all events, finish included.
    fn run(parser: &mut OutputParser, text: &str, cuts: &[usize]) -> Vec<OutputEvent> {
        let mut events = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            events.extend(parser.push(&text[last..cut]));
            last = cut;
        }
        events.extend(parser.finish());
        events
    }

    fn text_of(events: &[OutputEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                OutputEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn arguments_of(events: &[OutputEvent], index: usize) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                OutputEvent::CallArguments { index: i, fragment } if *i == index => {
                    Some(fragment.as_str())
                }
                _ => None,
            })
            .collect()
    }

    const TWO_CALLS: &str = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris {x}\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";

    #[test]
    fn calls_split_at_every_pair_of_points_give_the_same_events() {
        let whole = {
            let mut parser = OutputParser::new(tools(), Vec::new(), false);
            run(&mut parser, TWO_CALLS, &[])
        };
        let boundaries: Vec<usize> = (1..TWO_CALLS.len())
            .filter(|&i| TWO_CALLS.is_char_boundary(i))
            .collect();
        for (n, &a) in boundaries.iter().enumerate() {
            for &b in &boundaries[n..] {
                let mut parser = OutputParser::new(tools(), Vec::new(), false);
                let events = run(&mut parser, TWO_CALLS, &[a, b]);
                assert_eq!(text_of(&events), "Let me check.", "cut at {a},{b}");
                assert_eq!(parser.calls().len(), 2, "cut at {a},{b}");
                assert_eq!(
                    arguments_of(&events, 0),
                    "{\"city\": \"Paris {x}\", \"days\": [1, 2]}",
                    "cut at {a},{b}"
                );
                assert_eq!(arguments_of(&events, 1), "{}", "cut at {a},{b}");
                let starts = events
                    .iter()
                    .filter(|e| matches!(e, OutputEvent::CallStart { .. }))
                    .count();
                assert_eq!(starts, 2, "cut at {a},{b}");
                assert!(
                    events.iter().all(|e| match e {
                        OutputEvent::Text(t) => !t.contains('<'),
                        _ => true,
                    }),
                    "markup leaked at {a},{b}: {events:?}"
                );
            }
        }
        assert_eq!(whole.len(), 1 + 3 + 3);
    }

    #[test]
    fn parsed_calls_carry_names_and_arguments() {
        let mut parser = OutputParser::new(tools(), Vec::new(), false);
        run(&mut parser, TWO_CALLS, &[]);
        assert_eq!(parser.calls()[0].name, "weather");
        assert_eq!(
            parser.calls()[0].arguments,
            json!({"city": "Paris {x}", "days": [1, 2]})
        );
        assert_eq!(parser.calls()[1].name, "time");
        assert_ne!(parser.calls()[0].id, parser.calls()[1].id);
    }

    #[test]
    fn a_forced_call_starts_inside_the_call_and_may_lack_its_end_tag() {
        let mut parser = OutputParser::new(tools(), Vec::new(), true);
        let events = run(
            &mut parser,
            "{\"name\": \"time\", \"arguments\": {\"tz\": \"UTC\"}}",
            &[9],
        );
        assert_eq!(text_of(&events), "");
        assert_eq!(parser.calls()[0].arguments, json!({"tz": "UTC"}));
        assert_eq!(arguments_of(&events, 0), "{\"tz\": \"UTC\"}");
    }

    #[test]
    fn a_call_that_does_not_parse_comes_back_as_text() {
        let mut parser = OutputParser::new(tools(), Vec::new(), false);
        let events = run(&mut parser, "<tool_call>not json</tool_call>", &[]);
        assert!(parser.calls().is_empty());
        assert_eq!(text_of(&events), "<tool_call>not json");
    }

    #[test]
    fn bare_and_fenced_calls_at_the_start_are_calls() {
        for text in [
            "{\"name\": \"time\", \"arguments\": {\"tz\": \"UTC\"}}",
            "```json\n{\n  \"name\": \"time\",\n  \"arguments\": {\"tz\": \"UTC\"}\n}\n```",
        ] {
            for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let mut parser = OutputParser::new(tools(), Vec::new(), false);
                let events = run(&mut parser, text, &[cut]);
                assert_eq!(text_of(&events), "", "{text:?} cut at {cut}");
                assert_eq!(parser.calls().len(), 1, "{text:?} cut at {cut}");
                assert_eq!(parser.calls()[0].arguments, json!({"tz": "UTC"}));
                assert_eq!(arguments_of(&events, 0), "{\"tz\": \"UTC\"}");
            }
        }
    }

    #[test]
    fn several_bare_or_fenced_calls_are_parallel_calls() {
        for text in [
            "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}},\n{\"name\": \"time\", \"arguments\": {\"tz\": \"UTC\"}}",
            "```json\n{\n  \"name\": \"weather\",\n  \"arguments\": {\"city\": \"Paris\"}\n}\n{\n  \"name\": \"time\",\n  \"arguments\": {\"tz\": \"UTC\"}\n}\n```",
        ] {
            for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let mut parser = OutputParser::new(tools(), Vec::new(), false);
                let events = run(&mut parser, text, &[cut]);
                assert_eq!(text_of(&events), "", "{text:?} cut at {cut}");
                let names: Vec<&str> = parser.calls().iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["weather", "time"], "{text:?} cut at {cut}");
                assert_eq!(arguments_of(&events, 0), "{\"city\": \"Paris\"}");
                assert_eq!(arguments_of(&events, 1), "{\"tz\": \"UTC\"}");
            }
        }
    }

    #[test]
    fn text_after_fenced_calls_is_content() {
        let text = "```json\n{\"name\": \"time\", \"arguments\": {}}\n```\nDone.";
        let mut parser = OutputParser::new(tools(), Vec::new(), false);
        let events = run(&mut parser, text, &[]);
        assert_eq!(parser.calls().len(), 1);
        assert_eq!(text_of(&events).trim(), "Done.");
    }

    #[test]
    fn json_that_is_no_call_of_a_tool_stays_text() {
        for text in [
            "{\"name\": \"Alice\", \"age\": 3}",
            "```json\n{\"name\": \"sleep\", \"arguments\": {}}\n```",
            "Sure: {\"name\": \"time\", \"arguments\": {}}",
        ] {
            let mut parser = OutputParser::new(tools(), Vec::new(), false);
            let events = run(&mut parser, text, &[5]);
            assert_eq!(text_of(&events), text);
            assert!(parser.calls().is_empty());
        }
    }

    #[test]
    fn stop_sequences_are_cut_even_across_pieces() {
        for cut in 1.."Hello END world".len() {
            let mut parser = OutputParser::new(Vec::new(), vec!["END".into()], false);
            let events = run(&mut parser, "Hello END world", &[cut]);
            assert_eq!(text_of(&events), "Hello ", "cut at {cut}");
            assert!(events.contains(&OutputEvent::Stopped));
        }
        let mut parser = OutputParser::new(Vec::new(), vec!["END".into()], false);
        let events = run(&mut parser, "Hello EN", &[]);
        assert_eq!(text_of(&events), "Hello EN");
    }

    #[test]
    fn text_without_tools_passes_through() {
        let mut parser = OutputParser::new(Vec::new(), Vec::new(), false);
        let events = run(&mut parser, "a <tool_call> b", &[3]);
        assert_eq!(text_of(&events), "a <tool_call> b");
    }
}
