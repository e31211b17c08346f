//! Central authentication and authorization of every RPC, for every protocol.
//!
//! Each RPC declares what it needs with the proto option `(flowgate.api.permission)`: `none`,
//! `authenticated`, or a permission name. The table is read from the descriptor set once at start-up;
//! an RPC of a flowgate service without the option refuses to start the server, so no handler can
//! forget its check. The decision itself is core's (`Identity::authenticate`, `CallContext::require`).
//! Native gRPC and gRPC-web pass through [`crate::edge::GrpcEdge`]; REST handlers are wrapped by
//! [`Authorizer::wrap`]. Both put the resulting [`CallContext`] into the request extensions.

use std::collections::HashMap;
use std::sync::Arc;

use flowgate_core::identity::Identity;
use flowgate_core::identity::authz::{CallContext, Permission};
use flowgate_gateway::Handler;
use prost_reflect::DescriptorPool;

use crate::error::to_status;

/// Full name of the method option holding an RPC's requirement.
const PERMISSION_OPTION: &str = "flowgate.api.permission";

/// What an RPC requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing: answered without credentials.
    None,
    /// A valid bearer token; the use case decides the rest (e.g. own resources).
    Authenticated,
    /// A valid token whose roles grant this permission in the organization the call acts on.
    Permission(Permission),
}

/// The per-RPC requirement table and the identity service that decides.
#[derive(Clone)]
pub struct Authorizer {
    table: Arc<HashMap<String, Requirement>>,
    identity: Identity,
}

/// Builds the requirement table from the descriptor set. Services outside the `flowgate.` packages
/// (health, reflection) are public and not listed; every flowgate RPC must declare its requirement.
pub fn requirement_table(pool: &DescriptorPool) -> Result<HashMap<String, Requirement>, String> {
    let Some(ext) = pool.get_extension_by_name(PERMISSION_OPTION) else {
        return Err(format!("the descriptor set lacks the {PERMISSION_OPTION} option"));
    };
    let mut table = HashMap::new();
    for service in pool.services().filter(|s| s.full_name().starts_with("flowgate.")) {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            let value = options.get_extension(&ext);
            let declared = match (options.has_extension(&ext), value.as_str()) {
                (true, Some(s)) => s.to_owned(),
                (true, None) | (false, _) => return Err(format!("{path} declares no (flowgate.api.permission)")),
            };
            let requirement = match declared.as_str() {
                "none" => Requirement::None,
                "authenticated" => Requirement::Authenticated,
                name => Requirement::Permission(
                    Permission::parse(name).ok_or_else(|| format!("{path}: unknown permission {name:?}"))?,
                ),
            };
            table.insert(path, requirement);
        }
    }
    Ok(table)
}

impl Authorizer {
    /// An authorizer over a requirement table.
    pub fn new(table: HashMap<String, Requirement>, identity: Identity) -> Self {
        Self { table: Arc::new(table), identity }
    }

    /// What the RPC at `grpc_path` requires. Unknown paths require nothing here: the router answers them
    /// (Unimplemented/404).
    pub fn requirement(&self, grpc_path: &str) -> Requirement {
        self.table.get(grpc_path).copied().unwrap_or(Requirement::None)
    }

    /// Decides one call of an RPC requiring `requirement`: `Ok(None)` for public RPCs, `Ok(Some(ctx))`
    /// when the caller may proceed.
    pub async fn authorize(
        &self,
        requirement: Requirement,
        authorization: Option<&str>,
        org_header: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Option<CallContext>, tonic::Status> {
        if requirement == Requirement::None {
            return Ok(None);
        }
        let principal = self.identity.authenticate(authorization).await.map_err(|e| to_status(&e, request_id))?;
        let ctx = self.identity.call_context(principal, org_header).await.map_err(|e| to_status(&e, request_id))?;
        if let Requirement::Permission(permission) = requirement {
            let org = ctx.org_id.clone();
            ctx.require(permission, &org).map_err(|e| to_status(&e, request_id))?;
        }
        Ok(Some(ctx))
    }

    /// Wraps the REST handler of the RPC at `grpc_path` so it runs only after [`Authorizer::authorize`]
    /// let the call through.
    pub fn wrap(&self, grpc_path: &str, inner: Handler) -> Handler {
        let auth = self.clone();
        let requirement = self.requirement(grpc_path);
        Handler::from_fn(move |value, metadata: tonic::metadata::MetadataMap, mut extensions: http::Extensions| {
            let auth = auth.clone();
            let inner = inner.clone();
            async move {
                let header = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok());
                let ctx = auth
                    .authorize(requirement, header("authorization"), header("x-zitadel-orgid"), header("x-request-id"))
                    .await?;
                if let Some(ctx) = ctx {
                    extensions.insert(ctx);
                }
                inner.call(value, metadata, extensions).await
            }
        })
    }
}

/// The call context the edge attached; its absence means the RPC was wired without authorization.
pub fn context<T>(req: &tonic::Request<T>) -> Result<CallContext, tonic::Status> {
    req.extensions().get::<CallContext>().cloned().ok_or_else(|| {
        tracing::error!("RPC reached without a call context; its requirement table entry is missing");
        tonic::Status::internal("internal error")
    })
}
