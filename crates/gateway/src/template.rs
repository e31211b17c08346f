//! `google.api.http` path templates: parsing, a segment trie for matching, and capture extraction.

use std::collections::HashMap;

use crate::annotations::Dialect;

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: zero or more segments; only ever last.
    Multi,
}

/// A `{field.path=...}` variable covering template segments `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Var {
    pub field_path: Vec<String>,
    pub start: usize,
    pub end: usize,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pub segs: Vec<Seg>,
    pub vars: Vec<Var>,
    pub verb: Option<String>,
}

impl Template {
    /// Parses a template per the google.api.http grammar; a trailing `/` yields a final empty literal.
    pub(crate) fn parse(path: &str) -> Result<Template, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err("template must start with '/'".into());
        };
        // The verb is the text after the last ':' that sits outside braces and after the last '/'.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => verb_at = None,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
            if !(0..=1).contains(&depth) {
                return Err("unbalanced or nested braces".into());
            }
        }
        if depth != 0 {
            return Err("unbalanced braces".into());
        }
        let (body, verb) = match verb_at {
            Some(i) => {
                let verb = &rest[i + 1..];
                if verb.is_empty() || verb.contains(['{', '}', '*', '/']) {
                    return Err(format!("invalid verb {verb:?}"));
                }
                (&rest[..i], Some(verb.to_string()))
            }
            None => (rest, None),
        };

        let mut segs = Vec::new();
        let mut vars: Vec<Var> = Vec::new();
        for raw in split_top_level(body) {
            if let Some(inner) = raw.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return Err(format!("malformed variable {raw:?}"));
                };
                let (field, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (inner, "*"),
                };
                let field_path: Vec<String> = field.split('.').map(str::to_string).collect();
                if field_path.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(format!("invalid field path {field:?}"));
                }
                if vars.iter().any(|v| v.field_path == field_path) {
                    return Err(format!("variable {field:?} appears twice"));
                }
                if pattern.is_empty() {
                    return Err(format!("empty pattern in {raw:?}"));
                }
                let start = segs.len();
                for p in pattern.split('/') {
                    segs.push(parse_plain_segment(p)?);
                }
                vars.push(Var { field_path, start, end: segs.len() });
            } else {
                if raw.contains(['{', '}']) {
                    return Err(format!("malformed segment {raw:?}"));
                }
                segs.push(parse_plain_segment(raw)?);
            }
        }
        if let Some(pos) = segs.iter().position(|s| *s == Seg::Multi)
            && pos + 1 != segs.len()
        {
            return Err("'**' must be the last segment".into());
        }
        Ok(Template { segs, vars, verb })
    }

    /// A key identical for templates that match exactly the same paths (variable names aside).
    pub(crate) fn shape(&self) -> String {
        let mut s = String::new();
        for seg in &self.segs {
            s.push('/');
            match seg {
                Seg::Literal(l) => {
                    s.push('=');
                    s.push_str(l);
                }
                Seg::Single => s.push('*'),
                Seg::Multi => s.push_str("**"),
            }
        }
        if let Some(v) = &self.verb {
            s.push(':');
            s.push_str(v);
        }
        s
    }

    /// Extracts each variable's decoded value from matched raw path segments.
    pub(crate) fn captures(&self, raw_segments: &[&str]) -> Result<Vec<String>, String> {
        let multi_last = matches!(self.segs.last(), Some(Seg::Multi));
        let mut out = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            let end = if multi_last && var.end == self.segs.len() { raw_segments.len() } else { var.end };
            let Some(parts) = raw_segments.get(var.start..end) else {
                return Err("path does not cover the template".into());
            };
            let single = end - var.start == 1 && !(multi_last && var.end == self.segs.len());
            let joined = parts.join("/");
            out.push(percent_decode(&joined, !single)?);
        }
        Ok(out)
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_plain_segment(p: &str) -> Result<Seg, String> {
    match p {
        "*" => Ok(Seg::Single),
        "**" => Ok(Seg::Multi),
        _ if p.contains(['*', '{', '}', '=']) => Err(format!("invalid literal segment {p:?}")),
        _ => Ok(Seg::Literal(p.to_string())),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s`; with `keep_slash`, `%2F`/`%2f` stay encoded (reserved expansion of multi-segment values).
pub(crate) fn percent_decode(s: &str, keep_slash: bool) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|x| hex(*x)), bytes.get(i + 2).and_then(|x| hex(*x)))
        {
            let decoded = h * 16 + l;
            if keep_slash && decoded == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(decoded);
            }
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "path is not valid UTF-8 after percent-decoding".to_string())
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, usize>,
    single: Option<usize>,
    /// Routes whose template ends in `**` at this depth.
    multi: Vec<usize>,
    /// Routes whose template ends exactly here.
    terminal: Vec<usize>,
    /// The dialect shared by every route below this node, if they agree.
    dialect: Option<Dialect>,
}

/// A segment trie over route templates, so matching costs one walk instead of a scan of all routes.
#[derive(Debug)]
pub(crate) struct Router {
    nodes: Vec<Node>,
    /// Per route: (template, verb) for filtering matches.
    templates: Vec<Template>,
}

impl Router {
    /// Builds the trie; `routes[i]` is route id `i` with its dialect.
    pub(crate) fn new(routes: Vec<(Template, Dialect)>) -> Router {
        let mut nodes = vec![Node::default()];
        let mut dialect_sets: Vec<Vec<Dialect>> = vec![Vec::new()];
        let mut templates = Vec::with_capacity(routes.len());
        for (id, (template, dialect)) in routes.into_iter().enumerate() {
            let mut at = 0;
            add_dialect(&mut dialect_sets[at], dialect);
            for seg in &template.segs {
                match seg {
                    Seg::Literal(l) => {
                        let next = match nodes[at].literals.get(l) {
                            Some(n) => *n,
                            None => {
                                nodes.push(Node::default());
                                dialect_sets.push(Vec::new());
                                let n = nodes.len() - 1;
                                nodes[at].literals.insert(l.clone(), n);
                                n
                            }
                        };
                        at = next;
                    }
                    Seg::Single => {
                        let next = match nodes[at].single {
                            Some(n) => n,
                            None => {
                                nodes.push(Node::default());
                                dialect_sets.push(Vec::new());
                                let n = nodes.len() - 1;
                                nodes[at].single = Some(n);
                                n
                            }
                        };
                        at = next;
                    }
                    Seg::Multi => break,
                }
                add_dialect(&mut dialect_sets[at], dialect);
            }
            if matches!(template.segs.last(), Some(Seg::Multi)) {
                nodes[at].multi.push(id);
            } else {
                nodes[at].terminal.push(id);
            }
            templates.push(template);
        }
        for (node, set) in nodes.iter_mut().zip(dialect_sets) {
            if set.len() == 1 {
                node.dialect = set.first().copied();
            }
        }
        Router { nodes, templates }
    }

    /// Every route matching `raw_segments` (verb-less routes) or `verb_segments` + `verb`, most specific first.
    pub(crate) fn find(&self, raw_segments: &[&str], verb_split: Option<(&[&str], &str)>) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some((segments, verb)) = verb_split {
            let mut found = Vec::new();
            self.walk(0, segments, &mut found);
            out.extend(
                found.into_iter().filter(|id| self.templates.get(*id).and_then(|t| t.verb.as_deref()) == Some(verb)),
            );
        }
        let mut found = Vec::new();
        self.walk(0, raw_segments, &mut found);
        out.extend(found.into_iter().filter(|id| self.templates.get(*id).is_some_and(|t| t.verb.is_none())));
        out
    }

    fn walk(&self, at: usize, rest: &[&str], out: &mut Vec<usize>) {
        let Some(node) = self.nodes.get(at) else { return };
        match rest.split_first() {
            None => out.extend(node.terminal.iter().copied()),
            Some((first, tail)) => {
                let key = literal_key(first);
                if let Some(next) = key.as_deref().and_then(|k| node.literals.get(k)) {
                    self.walk(*next, tail, out);
                }
                if let Some(next) = node.single
                    && !first.is_empty()
                {
                    self.walk(next, tail, out);
                }
            }
        }
        out.extend(node.multi.iter().copied());
    }

    /// The dialect of the deepest node reachable from the path's leading literal segments.
    pub(crate) fn dialect_for(&self, raw_segments: &[&str]) -> Option<Dialect> {
        let mut at = 0;
        let mut best = self.nodes.first().and_then(|n| n.dialect);
        for seg in raw_segments {
            let Some(next) =
                literal_key(seg).as_deref().and_then(|k| self.nodes.get(at).and_then(|n| n.literals.get(k)))
            else {
                break;
            };
            at = *next;
            if let Some(d) = self.nodes.get(at).and_then(|n| n.dialect) {
                best = Some(d);
            }
        }
        best
    }
}

fn add_dialect(set: &mut Vec<Dialect>, d: Dialect) {
    if !set.contains(&d) {
        set.push(d);
    }
}

/// Literal template segments are compared with the decoded request segment.
fn literal_key(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if raw.contains('%') { percent_decode(raw, false).ok().map(std::borrow::Cow::Owned) } else { Some(raw.into()) }
}

/// Splits a request path into raw segments (`/a/b/` → `["a","b",""]`).
pub(crate) fn split_path(path: &str) -> Option<Vec<&str>> {
    path.strip_prefix('/').map(|rest| rest.split('/').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_patterns_and_verbs() {
        let t = Template::parse("/v1/{name=shelves/*/books/**}:publish").unwrap();
        assert_eq!(
            t.segs,
            vec![
                Seg::Literal("v1".into()),
                Seg::Literal("shelves".into()),
                Seg::Single,
                Seg::Literal("books".into()),
                Seg::Multi
            ]
        );
        assert_eq!(t.vars, vec![Var { field_path: vec!["name".into()], start: 1, end: 5 }]);
        assert_eq!(t.verb.as_deref(), Some("publish"));

        let t = Template::parse("/api/v3/flows/instances/{slug}/").unwrap();
        assert_eq!(t.segs.last(), Some(&Seg::Literal(String::new())));
        let t = Template::parse("/flows/{flow.type}/_clear").unwrap();
        assert_eq!(t.vars[0].field_path, vec!["flow".to_string(), "type".to_string()]);
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in
            ["v1/x", "/v1/{a", "/v1/{a}}", "/v1/**/x", "/v1/{a={b}}", "/v1/{a}/{a}", "/v1/x:", "/v1/{}", "/v1/a*b"]
        {
            assert!(Template::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn decodes_captures_with_reserved_slash() {
        let t = Template::parse("/v1/{name=shelves/*/books/**}").unwrap();
        let path = ["v1", "shelves", "s%201", "books", "a%2Fb", "c"];
        assert_eq!(t.captures(&path).unwrap(), vec!["shelves/s 1/books/a%2Fb/c".to_string()]);
        let t = Template::parse("/v1/{id}").unwrap();
        assert_eq!(t.captures(&["v1", "a%2Fb%20c"]).unwrap(), vec!["a/b c".to_string()]);
        assert!(percent_decode("%ff", false).is_err());
        assert_eq!(percent_decode("%zz%4", false).unwrap(), "%zz%4");
    }

    #[test]
    fn two_hundred_routes_match_by_walk() {
        let mut routes = Vec::new();
        for i in 0..200 {
            let path = match i % 4 {
                0 => format!("/v{i}/items/{{id}}"),
                1 => format!("/v{i}/items/{{id}}/sub/{{name=a/*}}"),
                2 => format!("/api/v3/r{i}/"),
                _ => format!("/v{i}/{{name=**}}:run"),
            };
            routes.push((Template::parse(&path).unwrap(), Dialect::Zitadel));
        }
        let r = Router::new(routes);
        assert_eq!(r.find(&["v0", "items", "7"], None), vec![0]);
        assert_eq!(r.find(&["v101", "items", "7", "sub", "a", "b"], None), vec![101]);
        assert_eq!(r.find(&["api", "v3", "r198", ""], None), vec![198]);
        assert_eq!(r.find(&["v199", "x", "y:run"], Some((&["v199", "x", "y"], "run"))), vec![199]);
        assert!(r.find(&["v1", "items", "7"], None).is_empty());
        // Each node is reached through a hash lookup: the trie stays shallow and narrow.
        assert!(r.nodes.len() < 200 * 6);
    }

    #[test]
    fn trie_prefers_literals_and_keeps_trailing_slash() {
        let routes = vec![
            (Template::parse("/a/{x}").unwrap(), Dialect::Zitadel),
            (Template::parse("/a/b").unwrap(), Dialect::Zitadel),
            (Template::parse("/a/{x}/").unwrap(), Dialect::Authentik),
            (Template::parse("/m/**").unwrap(), Dialect::PingOne),
            (Template::parse("/a/{x}:go").unwrap(), Dialect::Zitadel),
        ];
        let r = Router::new(routes);
        assert_eq!(r.find(&["a", "b"], None), vec![1, 0]);
        assert_eq!(r.find(&["a", "b", ""], None), vec![2]);
        assert_eq!(r.find(&["a", ""], None), Vec::<usize>::new());
        assert_eq!(r.find(&["m"], None), vec![3]);
        assert_eq!(r.find(&["m", "x", "y"], None), vec![3]);
        assert_eq!(r.find(&["a", "q:go"], Some((&["a", "q"], "go"))), vec![4, 0]);
        assert_eq!(r.dialect_for(&["m", "zzz"]), Some(Dialect::PingOne));
        assert_eq!(r.dialect_for(&["zzz"]), None);
    }
}
