//! Expression policies in CEL: compile checks, bounded evaluation, and the policy engine (bindings, negate,
//! failure results, `all`/`any`).
//!
//! Evaluation runs on a blocking thread because a CEL program cannot be interrupted: the caller waits at
//! most the binding's timeout (capped by [`PolicyConfig::max_timeout`]) and then fails closed, while the
//! thread finishes in the background. A semaphore bounds how many evaluations run at once (the permit lives
//! as long as the thread, so runaway expressions cannot pile up threads), and the size and nesting caps
//! checked at compile time keep the interpreter's recursion within a thread's stack.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::model::{MAX_EXPRESSION_BYTES, PolicyBindingSpec, PolicyEngineMode};

/// Deepest nesting of brackets in an expression's source and of its syntax tree (halved for the source:
/// every bracket level adds at least one tree level).
pub const MAX_NESTING: usize = 32;
/// Deepest syntax tree accepted; long operator chains (`a && b && …`) nest the tree without brackets.
pub const MAX_TREE_DEPTH: usize = 64;

/// Limits of policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Upper bound of any binding's timeout (default 1 s).
    pub max_timeout: Duration,
    /// Evaluations running at once (default 8); more wait for a permit within their timeout.
    pub max_concurrent: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { max_timeout: Duration::from_secs(1), max_concurrent: 8 }
    }
}

/// The user a policy sees as `user` (or `null` when anonymous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUser {
    /// User id.
    pub id: String,
    /// Username.
    pub username: String,
    /// E-mail address ("" for machines).
    pub email: String,
    /// Organization id.
    pub org_id: String,
    /// `active` | `inactive` | `locked`.
    pub state: String,
    /// Whether the user holds an instance role.
    pub is_superuser: bool,
}

/// The request a policy sees as `request`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRequest {
    /// Client IP address ("" when unknown).
    pub ip: String,
    /// User agent ("" when unknown).
    pub user_agent: String,
    /// Path of the original request.
    pub path: String,
    /// Query parameters of the original request.
    pub query: BTreeMap<String, String>,
}

/// Everything a policy can read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyInput {
    /// `user`, or `null`.
    pub user: Option<PolicyUser>,
    /// `request`.
    pub request: PolicyRequest,
    /// `context`: the flow plan context.
    pub context: serde_json::Map<String, Value>,
    /// `flow`: `{slug, designation}` of the flow being planned, or `null`.
    pub flow: Option<(String, String)>,
}

impl PolicyInput {
    /// The variables as JSON values, by name.
    fn variables(&self) -> Vec<(&'static str, Value)> {
        let PolicyInput { user, request, context, flow } = self;
        let user = user.as_ref().map_or(Value::Null, |u| {
            let PolicyUser { id, username, email, org_id, state, is_superuser } = u;
            json!({
                "id": id, "username": username, "email": email, "org_id": org_id, "state": state,
                "is_superuser": is_superuser,
            })
        });
        let PolicyRequest { ip, user_agent, path, query } = request;
        let request = json!({ "ip": ip, "user_agent": user_agent, "path": path, "query": query });
        let flow = flow
            .as_ref()
            .map_or(Value::Null, |(slug, designation)| json!({ "slug": slug, "designation": designation }));
        vec![("user", user), ("request", request), ("context", Value::Object(context.clone())), ("flow", flow)]
    }
}

/// The outcome of one policy, one binding, or an engine run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// Whether it passed.
    pub passing: bool,
    /// Why not (failures, timeouts), in evaluation order.
    pub messages: Vec<String>,
}

impl PolicyResult {
    fn pass() -> Self {
        Self { passing: true, messages: Vec::new() }
    }
}

/// Checks that `expression` fits the caps and compiles; the error is the message to show on `expression`.
pub fn check_expression(expression: &str) -> Result<(), String> {
    compile(expression).map(|_| ())
}

/// A blank expression, an oversized one, too deep a nesting, or the compiler's message.
fn compile(expression: &str) -> Result<cel::Program, String> {
    if expression.trim().is_empty() {
        return Err(super::validate::BLANK.to_owned());
    }
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(format!("Ensure this expression has no more than {MAX_EXPRESSION_BYTES} bytes."));
    }
    if source_nesting(expression) > MAX_NESTING {
        return Err(format!("The expression nests deeper than {MAX_NESTING} levels."));
    }
    // The parser recurses once per operator of a chain like `1 + 1 + …` and overflows an ordinary thread's
    // stack long before the size cap; parsing (and dropping a refused tree) therefore happens on a thread
    // with a stack large enough for the biggest accepted source.
    let source = expression.to_owned();
    let parser = std::thread::Builder::new()
        .name("cel-compile".to_owned())
        .stack_size(COMPILE_STACK)
        .spawn(move || {
            let program = cel::Program::compile(&source).map_err(|e| e.to_string().trim().to_owned())?;
            if tree_depth(program.expression()) > MAX_TREE_DEPTH {
                return Err(format!("The expression nests deeper than {MAX_TREE_DEPTH} levels."));
            }
            Ok(program)
        })
        .map_err(|e| format!("the expression cannot be compiled now: {e}"))?;
    parser.join().map_err(|_| "the expression could not be compiled".to_owned())?
}

/// Stack of the compiling thread: enough for a 16 KiB chain of binary operators in a debug build.
const COMPILE_STACK: usize = 64 * 1024 * 1024;

/// Deepest bracket nesting outside string literals (the parser recurses once per level, so this runs
/// before it does).
fn source_nesting(source: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Depth of the syntax tree, walked without recursion.
fn tree_depth(root: &cel::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let mut deepest = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let next = depth + 1;
        match &node.expr {
            Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    stack.push((target, next));
                }
                stack.extend(call.args.iter().map(|a| (a, next)));
            }
            Expr::Comprehension(c) => {
                for e in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    stack.push((e, next));
                }
            }
            Expr::List(list) => stack.extend(list.elements.iter().map(|e| (e, next))),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            stack.push((&e.key, next));
                            stack.push((&e.value, next));
                        }
                        EntryExpr::StructField(f) => stack.push((&f.value, next)),
                    }
                }
            }
            Expr::Select(select) => stack.push((&select.operand, next)),
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            stack.push((&e.key, next));
                            stack.push((&e.value, next));
                        }
                        EntryExpr::StructField(f) => stack.push((&f.value, next)),
                    }
                }
            }
        }
    }
    deepest
}

/// Most compiled programs kept; the cache is emptied when full (policies are few, expressions rarely change).
const PROGRAM_CACHE: usize = 1024;

struct Shared {
    env: Arc<cel::Env>,
    programs: RwLock<HashMap<String, Arc<cel::Program>>>,
}

impl Shared {
    fn program(&self, expression: &str) -> Result<Arc<cel::Program>, String> {
        // A poisoned lock only means another evaluation panicked while holding it; the map is still valid.
        if let Some(p) = self.programs.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(expression) {
            return Ok(Arc::clone(p));
        }
        let program = Arc::new(compile(expression)?);
        let mut programs = self.programs.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if programs.len() >= PROGRAM_CACHE {
            programs.clear();
        }
        programs.insert(expression.to_owned(), Arc::clone(&program));
        Ok(program)
    }

    /// Compiles (cached) and runs `expression`; `Ok` only for a boolean result.
    fn run(&self, expression: &str, variables: Vec<(&'static str, Value)>) -> Result<bool, String> {
        let program = self.program(expression)?;
        let mut context = cel::Context::with_env(Arc::clone(&self.env));
        for (name, value) in variables {
            let value = cel::to_value(value).map_err(|e| format!("cannot pass {name} to the policy: {e}"))?;
            context.add_variable_from_value(name, value);
        }
        match program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("policy returned {:?} instead of a boolean", other.type_of())),
            Err(e) => Err(format!("policy failed: {e}")),
        }
    }
}

/// Evaluates expression policies within time and concurrency limits; cheap to clone.
#[derive(Clone)]
pub struct PolicyEvaluator {
    config: PolicyConfig,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for PolicyEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEvaluator").field("config", &self.config).finish_non_exhaustive()
    }
}

impl PolicyEvaluator {
    /// An evaluator with `config` (a `max_concurrent` of 0 is treated as 1).
    pub fn new(config: PolicyConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        let shared = Arc::new(Shared { env: Arc::new(cel::Env::stdlib()), programs: RwLock::new(HashMap::new()) });
        Self { config, shared, permits }
    }

    /// The limits in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Runs `expression` with `input` for at most `timeout` (capped by the configured maximum): `Ok` with
    /// the boolean result, or `Err` with why it has none (compile error, non-boolean result, evaluation
    /// error, timeout, overload). Never waits longer than the cap, whatever the expression does.
    pub async fn evaluate(&self, expression: &str, input: &PolicyInput, timeout: Duration) -> Result<bool, String> {
        let limit = timeout.min(self.config.max_timeout);
        let timed_out = || format!("policy evaluation timed out after {} ms", limit.as_millis());
        let started = tokio::time::Instant::now();
        let permit = match tokio::time::timeout(limit, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err("policy evaluation is shutting down".to_owned()),
            Err(_) => return Err(timed_out()),
        };
        let shared = Arc::clone(&self.shared);
        let expression = expression.to_owned();
        let variables = input.variables();
        let task = tokio::task::spawn_blocking(move || {
            // The permit is released when the evaluation really ends, not when the caller stops waiting.
            let _permit = permit;
            shared.run(&expression, variables)
        });
        let remaining = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("policy evaluation crashed: {join}")),
            Err(_) => Err(timed_out()),
        }
    }

    /// One binding: the policy's result flipped by `negate`; when the evaluation fails or times out, the
    /// binding's `failure_result` as is (never negated, so a broken policy cannot turn into a pass through
    /// `negate`) with the reason in `messages`.
    pub async fn evaluate_binding(
        &self,
        binding: &PolicyBindingSpec,
        expression: &str,
        input: &PolicyInput,
    ) -> PolicyResult {
        let timeout = Duration::from_secs(u64::from(binding.timeout));
        match self.evaluate(expression, input, timeout).await {
            Ok(result) => PolicyResult { passing: result != binding.negate, messages: Vec::new() },
            Err(message) => PolicyResult { passing: binding.failure_result, messages: vec![message] },
        }
    }

    /// The engine: the enabled bindings of `bindings` (with their expressions), in order, combined by
    /// `mode`. No enabled binding ⇒ pass. `all` stops at the first failing binding, `any` at the first
    /// passing one.
    pub async fn evaluate_all(
        &self,
        mode: PolicyEngineMode,
        bindings: &[(PolicyBindingSpec, String)],
        input: &PolicyInput,
    ) -> PolicyResult {
        let mut messages = Vec::new();
        let mut evaluated = false;
        for (binding, expression) in bindings.iter().filter(|(b, _)| b.enabled) {
            evaluated = true;
            let result = self.evaluate_binding(binding, expression, input).await;
            messages.extend(result.messages);
            match (mode, result.passing) {
                (PolicyEngineMode::All, false) => return PolicyResult { passing: false, messages },
                (PolicyEngineMode::Any, true) => return PolicyResult { passing: true, messages },
                (PolicyEngineMode::All, true) | (PolicyEngineMode::Any, false) => {}
            }
        }
        if !evaluated {
            return PolicyResult::pass();
        }
        PolicyResult { passing: mode == PolicyEngineMode::All, messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_checks() {
        assert!(check_expression("user != null && user.username == 'alice'").is_ok());
        assert!(check_expression("request.query.exists(k, k == 'next')").is_ok());
        assert_eq!(check_expression("  ").unwrap_err(), "This field may not be blank.");
        assert!(check_expression("user.username ==").is_err());
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(check_expression(&deep).unwrap_err().contains("nests deeper"));
        let brackets_in_string = format!("'{}' == ''", "(".repeat(40));
        assert!(check_expression(&brackets_in_string).is_ok());
        let big = format!("'{}' == ''", "x".repeat(MAX_EXPRESSION_BYTES));
        assert!(check_expression(&big).unwrap_err().contains("16384"));
    }

    #[test]
    fn long_operator_chains_are_refused_before_evaluation() {
        // The parser balances `&&`/`||` chains, but arithmetic chains nest one tree level per operator.
        let balanced = vec!["true"; 2000].join(" && ");
        assert!(check_expression(&balanced).is_ok());
        let chain = format!("{} > 0", vec!["1"; 3000].join(" + "));
        let err = check_expression(&chain).unwrap_err();
        assert!(err.contains("nests deeper"), "{err}");
        let longest = format!("{} > 0", vec!["1"; MAX_EXPRESSION_BYTES / 2 - 4].join("+"));
        assert!(longest.len() <= MAX_EXPRESSION_BYTES);
        assert!(check_expression(&longest).unwrap_err().contains("nests deeper"));
    }
}
