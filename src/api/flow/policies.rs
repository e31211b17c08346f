//! `PolicyService`: expression policies, the policy test, and policy bindings.

use flowgate_core::flow::{
    ExpressionPolicyInput, Policy, PolicyBinding, PolicyBindingFilter, PolicyBindingInput, PolicyBindingSpec,
    PolicyBindingView, PolicyFilter, PolicyResult, PolicySpec, PolicyUser, PolicyView,
};
use flowgate_core::identity::model::{User, UserId, UserKind};
use tonic::{Request, Response, Status};

use super::{FlowApi, autocomplete, begin, fail, filter, list_params, mask_paths, pagination, pb};
use crate::api::convert::invalid;

/// authentik's presentation of the expression policy model (flowgate has this one policy type).
const COMPONENT: &str = "ak-policy-expression";
const VERBOSE_NAME: &str = "Expression Policy";
const VERBOSE_NAME_PLURAL: &str = "Expression Policies";
const META_MODEL_NAME: &str = "authentik_policies_expression.expressionpolicy";

fn policy_input(r: Option<pb::ExpressionPolicyRequest>) -> ExpressionPolicyInput {
    let pb::ExpressionPolicyRequest { name, execution_logging, expression } = r.unwrap_or_default();
    ExpressionPolicyInput { name, expression, execution_logging }
}

fn expression_policy_to_pb(view: PolicyView) -> pb::ExpressionPolicy {
    let PolicyView { policy, bound_to } = view;
    let Policy { id, org_id: _, spec, details: _ } = policy;
    let PolicySpec { name, expression, execution_logging } = spec;
    pb::ExpressionPolicy {
        pk: id.into_string(),
        name,
        execution_logging,
        component: COMPONENT.to_owned(),
        verbose_name: VERBOSE_NAME.to_owned(),
        verbose_name_plural: VERBOSE_NAME_PLURAL.to_owned(),
        meta_model_name: META_MODEL_NAME.to_owned(),
        bound_to: i32::try_from(bound_to).unwrap_or(i32::MAX),
        expression,
    }
}

/// The generic form of a policy (`policy_obj`, `/policies/all/`).
fn policy_to_pb(policy: Policy, bound_to: u32) -> pb::Policy {
    let Policy { id, org_id: _, spec, details: _ } = policy;
    let PolicySpec { name, expression: _, execution_logging } = spec;
    pb::Policy {
        pk: id.into_string(),
        name,
        execution_logging,
        component: COMPONENT.to_owned(),
        verbose_name: VERBOSE_NAME.to_owned(),
        verbose_name_plural: VERBOSE_NAME_PLURAL.to_owned(),
        meta_model_name: META_MODEL_NAME.to_owned(),
        bound_to: i32::try_from(bound_to).unwrap_or(i32::MAX),
    }
}

fn policy_binding_input(r: Option<pb::PolicyBindingRequest>) -> PolicyBindingInput {
    let pb::PolicyBindingRequest { policy, target, negate, enabled, order, timeout, failure_result } =
        r.unwrap_or_default();
    PolicyBindingInput {
        policy,
        target,
        negate,
        enabled,
        order,
        // A negative timeout is below the minimum: core answers it with the range message.
        timeout: timeout.map(|t| u32::try_from(t).unwrap_or(0)),
        failure_result,
    }
}

fn policy_binding_to_pb(view: PolicyBindingView) -> pb::PolicyBinding {
    let PolicyBindingView { binding, policy } = view;
    let PolicyBinding { id, org_id: _, spec, details: _ } = binding;
    let PolicyBindingSpec { policy: policy_id, target, negate, enabled, order, timeout, failure_result } = spec;
    pb::PolicyBinding {
        pk: id.into_string(),
        policy: policy_id.into_string(),
        // The embedded policy does not count its bindings (authentik's `policy_obj` does not either).
        policy_obj: Some(policy_to_pb(policy, 0)),
        target: target.into_string(),
        negate,
        enabled,
        order,
        timeout: i32::try_from(timeout).unwrap_or(i32::MAX),
        failure_result,
    }
}

/// What a policy sees as `user` for a stored user.
fn policy_user(user: User) -> PolicyUser {
    let User { id, org_id, username, state, kind, details: _, login_names: _, preferred_login_name: _ } = user;
    let email = match kind {
        UserKind::Human(human) => human.email.address,
        UserKind::Machine(_) => String::new(),
    };
    PolicyUser {
        id: id.into_string(),
        username,
        email,
        org_id: org_id.into_string(),
        state: state.as_str().to_owned(),
        // The identity use cases do not expose a user's instance roles to other services yet.
        is_superuser: false,
    }
}

fn struct_to_map(
    s: Option<pbjson_types::Struct>,
    rid: Option<&str>,
) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    let Some(s) = s else { return Ok(serde_json::Map::new()) };
    match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) | Err(_) => Err(invalid("context", "Invalid data. Expected a dictionary.", rid)),
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for FlowApi {
    async fn list_expression_policies(
        &self,
        req: Request<pb::ListExpressionPoliciesRequest>,
    ) -> Result<Response<pb::ListExpressionPoliciesResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::ListExpressionPoliciesRequest { name, search, ordering, page, page_size } = req.into_inner();
        let filter_by =
            PolicyFilter { name: filter(name), execution_logging: None, policy_uuid: None, search: filter(search) };
        let params = list_params(page, page_size, ordering, rid)?;
        let found = self.flows.list_policies(&ctx, filter_by, params.clone()).await.map_err(fail(rid))?;
        Ok(Response::new(pb::ListExpressionPoliciesResponse {
            pagination: Some(pagination(&params, found.total, found.items.len())),
            results: found.items.into_iter().map(expression_policy_to_pb).collect(),
            autocomplete: autocomplete(),
        }))
    }

    async fn create_expression_policy(
        &self,
        req: Request<pb::CreateExpressionPolicyRequest>,
    ) -> Result<Response<pb::CreateExpressionPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::CreateExpressionPolicyRequest { policy } = req.into_inner();
        let view = self.flows.create_policy(&ctx, policy_input(policy)).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::CreateExpressionPolicyResponse { policy: Some(expression_policy_to_pb(view)) }))
    }

    async fn get_expression_policy(
        &self,
        req: Request<pb::GetExpressionPolicyRequest>,
    ) -> Result<Response<pb::GetExpressionPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::GetExpressionPolicyRequest { policy_uuid } = req.into_inner();
        let view = self.flows.get_policy(&ctx, &policy_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::GetExpressionPolicyResponse { policy: Some(expression_policy_to_pb(view)) }))
    }

    async fn update_expression_policy(
        &self,
        req: Request<pb::UpdateExpressionPolicyRequest>,
    ) -> Result<Response<pb::UpdateExpressionPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::UpdateExpressionPolicyRequest { policy_uuid, policy } = req.into_inner();
        let view =
            self.flows.update_policy(&ctx, &policy_uuid, policy_input(policy)).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::UpdateExpressionPolicyResponse { policy: Some(expression_policy_to_pb(view)) }))
    }

    async fn patch_expression_policy(
        &self,
        req: Request<pb::PatchExpressionPolicyRequest>,
    ) -> Result<Response<pb::PatchExpressionPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::PatchExpressionPolicyRequest { policy_uuid, policy, update_mask } = req.into_inner();
        let mask = mask_paths(update_mask, "policy");
        let view = self
            .flows
            .patch_policy(&ctx, &policy_uuid, policy_input(policy), &mask)
            .await
            .map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::PatchExpressionPolicyResponse { policy: Some(expression_policy_to_pb(view)) }))
    }

    async fn delete_expression_policy(
        &self,
        req: Request<pb::DeleteExpressionPolicyRequest>,
    ) -> Result<Response<pb::DeleteExpressionPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::DeleteExpressionPolicyRequest { policy_uuid } = req.into_inner();
        self.flows.delete_policy(&ctx, &policy_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::DeleteExpressionPolicyResponse {}))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::ListPoliciesRequest { name, search, ordering, page, page_size } = req.into_inner();
        let filter_by =
            PolicyFilter { name: filter(name), execution_logging: None, policy_uuid: None, search: filter(search) };
        let params = list_params(page, page_size, ordering, rid)?;
        let found = self.flows.list_policies(&ctx, filter_by, params.clone()).await.map_err(fail(rid))?;
        Ok(Response::new(pb::ListPoliciesResponse {
            pagination: Some(pagination(&params, found.total, found.items.len())),
            results: found.items.into_iter().map(|v| policy_to_pb(v.policy, v.bound_to)).collect(),
            autocomplete: autocomplete(),
        }))
    }

    async fn test_policy(
        &self,
        req: Request<pb::TestPolicyRequest>,
    ) -> Result<Response<pb::TestPolicyResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::TestPolicyRequest { policy_uuid, user, context } = req.into_inner();
        let context = struct_to_map(context, rid)?;
        let user = match filter(user.unwrap_or_default()) {
            None => None,
            Some(id) => Some(policy_user(self.identity.get_user(&ctx, &UserId::from(id)).await.map_err(fail(rid))?)),
        };
        let PolicyResult { passing, messages } =
            self.flows.test_policy(&ctx, &policy_uuid, user, context).await.map_err(fail(rid))?;
        Ok(Response::new(pb::TestPolicyResponse { passing, messages, log_messages: Vec::new() }))
    }

    async fn list_policy_bindings(
        &self,
        req: Request<pb::ListPolicyBindingsRequest>,
    ) -> Result<Response<pb::ListPolicyBindingsResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::ListPolicyBindingsRequest {
            target,
            policy,
            enabled,
            order,
            timeout,
            search,
            ordering,
            page,
            page_size,
        } = req.into_inner();
        if !search.is_empty() {
            // Core has no text search over policy bindings; refusing beats answering an unfiltered list.
            return Err(invalid("search", "Search is not supported on policy bindings.", rid));
        }
        let timeout = match timeout {
            None => None,
            Some(t) => Some(u32::try_from(t).map_err(|_| invalid("timeout", "A valid integer is required.", rid))?),
        };
        let filter_by = PolicyBindingFilter {
            policy: filter(policy).map(Into::into),
            target: filter(target).map(Into::into),
            enabled,
            order,
            timeout,
        };
        let params = list_params(page, page_size, ordering, rid)?;
        let found = self.flows.list_policy_bindings(&ctx, filter_by, params.clone()).await.map_err(fail(rid))?;
        Ok(Response::new(pb::ListPolicyBindingsResponse {
            pagination: Some(pagination(&params, found.total, found.items.len())),
            results: found.items.into_iter().map(policy_binding_to_pb).collect(),
            autocomplete: autocomplete(),
        }))
    }

    async fn create_policy_binding(
        &self,
        req: Request<pb::CreatePolicyBindingRequest>,
    ) -> Result<Response<pb::CreatePolicyBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::CreatePolicyBindingRequest { binding } = req.into_inner();
        let view = self
            .flows
            .create_policy_binding(&ctx, policy_binding_input(binding))
            .await
            .map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::CreatePolicyBindingResponse { binding: Some(policy_binding_to_pb(view)) }))
    }

    async fn get_policy_binding(
        &self,
        req: Request<pb::GetPolicyBindingRequest>,
    ) -> Result<Response<pb::GetPolicyBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::GetPolicyBindingRequest { policy_binding_uuid } = req.into_inner();
        let view = self.flows.get_policy_binding(&ctx, &policy_binding_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::GetPolicyBindingResponse { binding: Some(policy_binding_to_pb(view)) }))
    }

    async fn update_policy_binding(
        &self,
        req: Request<pb::UpdatePolicyBindingRequest>,
    ) -> Result<Response<pb::UpdatePolicyBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::UpdatePolicyBindingRequest { policy_binding_uuid, binding } = req.into_inner();
        let view = self
            .flows
            .update_policy_binding(&ctx, &policy_binding_uuid, policy_binding_input(binding))
            .await
            .map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::UpdatePolicyBindingResponse { binding: Some(policy_binding_to_pb(view)) }))
    }

    async fn patch_policy_binding(
        &self,
        req: Request<pb::PatchPolicyBindingRequest>,
    ) -> Result<Response<pb::PatchPolicyBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::PatchPolicyBindingRequest { policy_binding_uuid, binding, update_mask } = req.into_inner();
        let mask = mask_paths(update_mask, "binding");
        let view = self
            .flows
            .patch_policy_binding(&ctx, &policy_binding_uuid, policy_binding_input(binding), &mask)
            .await
            .map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::PatchPolicyBindingResponse { binding: Some(policy_binding_to_pb(view)) }))
    }

    async fn delete_policy_binding(
        &self,
        req: Request<pb::DeletePolicyBindingRequest>,
    ) -> Result<Response<pb::DeletePolicyBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::DeletePolicyBindingRequest { policy_binding_uuid } = req.into_inner();
        self.flows.delete_policy_binding(&ctx, &policy_binding_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::DeletePolicyBindingResponse {}))
    }
}
