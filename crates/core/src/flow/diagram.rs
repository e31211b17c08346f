//! Mermaid text of a flow: a start node, one node per stage binding in order, policy-gated edges, an end.

/// One binding as the diagram shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagramStage {
    /// Stage name.
    pub name: String,
    /// Stage component, e.g. `ak-stage-identification`.
    pub component: String,
    /// Binding order.
    pub order: i32,
    /// Names of the enabled policies bound to the binding (empty = not gated).
    pub policies: Vec<String>,
    /// Whether the policies run when planning (else just before the stage).
    pub evaluate_on_plan: bool,
}

/// Escapes text for a quoted Mermaid label: quotes, brackets, pipes, angle brackets and line breaks become
/// entity codes so a name can never close the node or inject syntax.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '[' => out.push_str("#91;"),
            ']' => out.push_str("#93;"),
            '(' => out.push_str("#40;"),
            ')' => out.push_str("#41;"),
            '{' => out.push_str("#123;"),
            '}' => out.push_str("#125;"),
            '|' => out.push_str("#124;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The diagram of the flow named `flow_name` (policies gating the flow itself in `flow_policies`) with
/// `stages` in binding order; the first line is `graph TD`.
pub fn render(flow_name: &str, flow_policies: &[String], stages: &[DiagramStage]) -> String {
    let mut lines = vec!["graph TD".to_owned()];
    lines.push(format!("    flow_start[[\"Flow: {}\"]]", escape(flow_name)));
    let mut previous = "flow_start".to_owned();
    let mut gate = (!flow_policies.is_empty()).then(|| format!("policies: {}", flow_policies.join(", ")));
    for (i, stage) in stages.iter().enumerate() {
        let node = format!("stage_{i}");
        lines.push(format!(
            "    {node}[\"{} ({}), order {}\"]",
            escape(&stage.name),
            escape(&stage.component),
            stage.order
        ));
        lines.push(edge(&previous, &node, gate.take().as_deref()));
        if !stage.policies.is_empty() {
            let when = if stage.evaluate_on_plan { "on plan" } else { "before the stage" };
            lines.push(format!(
                "    {node}_policy{{{{\"policies ({when}): {}\"}}}}",
                escape(&stage.policies.join(", "))
            ));
            lines.push(format!("    {node}_policy -.->|\"gates\"| {node}"));
        }
        previous = node;
    }
    lines.push("    done((\"End\"))".to_owned());
    lines.push(edge(&previous, "done", gate.as_deref()));
    lines.join("\n") + "\n"
}

fn edge(from: &str, to: &str, label: Option<&str>) -> String {
    match label {
        Some(label) => format!("    {from} -->|\"{}\"| {to}", escape(label)),
        None => format!("    {from} --> {to}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_syntax() {
        assert_eq!(escape("a \"b\" [c] (d) |e| <f>"), "a #quot;b#quot; #91;c#93; #40;d#41; #124;e#124; #lt;f#gt;");
    }

    #[test]
    fn empty_flow() {
        let text = render("Login", &[], &[]);
        assert_eq!(text, "graph TD\n    flow_start[[\"Flow: Login\"]]\n    done((\"End\"))\n    flow_start --> done\n");
    }
}
