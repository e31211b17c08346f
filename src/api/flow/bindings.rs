//! `BindingService`: flow-stage bindings.

use flowgate_core::flow::{
    Binding, BindingFilter, BindingInput, BindingSpec, BindingView, InvalidResponseAction, PolicyEngineMode,
};
use tonic::{Request, Response, Status};

use super::stages::stage_to_pb;
use super::{
    FlowApi, autocomplete, begin, choice_in, choice_out, fail, filter, list_params, mask_paths, pagination,
    parse_choice, pb,
};

/// The writable fields as sent; unspecified enums are "not sent".
fn binding_input(r: Option<pb::FlowStageBindingRequest>, rid: Option<&str>) -> Result<BindingInput, Status> {
    let pb::FlowStageBindingRequest {
        target,
        stage,
        evaluate_on_plan,
        re_evaluate_policies,
        order,
        policy_engine_mode,
        invalid_response_action,
    } = r.unwrap_or_default();
    Ok(BindingInput {
        target,
        stage,
        order,
        evaluate_on_plan,
        re_evaluate_policies,
        policy_engine_mode: choice_in::<pb::PolicyEngineMode>(policy_engine_mode, "policy_engine_mode", rid)?,
        invalid_response_action: choice_in::<pb::InvalidResponseAction>(
            invalid_response_action,
            "invalid_response_action",
            rid,
        )?,
    })
}

/// The wire form of a binding with its stage.
fn binding_to_pb(view: BindingView) -> pb::FlowStageBinding {
    let BindingView { binding, stage } = view;
    let Binding { id, pbm_id, org_id: _, spec, details: _ } = binding;
    let BindingSpec {
        target,
        stage: stage_id,
        order,
        evaluate_on_plan,
        re_evaluate_policies,
        policy_engine_mode,
        invalid_response_action,
    } = spec;
    pb::FlowStageBinding {
        pk: id.into_string(),
        policybindingmodel_ptr_id: pbm_id.into_string(),
        target: target.into_string(),
        stage: stage_id.into_string(),
        stage_obj: Some(stage_to_pb(stage)),
        evaluate_on_plan,
        re_evaluate_policies,
        order,
        policy_engine_mode: choice_out::<pb::PolicyEngineMode>(policy_engine_mode.as_str()),
        invalid_response_action: choice_out::<pb::InvalidResponseAction>(invalid_response_action.as_str()),
    }
}

#[tonic::async_trait]
impl pb::binding_service_server::BindingService for FlowApi {
    async fn list_bindings(
        &self,
        req: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::ListBindingsRequest {
            target,
            stage,
            order,
            evaluate_on_plan,
            re_evaluate_policies,
            policy_engine_mode,
            invalid_response_action,
            fsb_uuid,
            pbm_uuid,
            search,
            ordering,
            page,
            page_size,
        } = req.into_inner();
        let filter_by = BindingFilter {
            target: filter(target).map(Into::into),
            stage: filter(stage).map(Into::into),
            order,
            evaluate_on_plan,
            re_evaluate_policies,
            policy_engine_mode: parse_choice::<pb::PolicyEngineMode, _>(
                policy_engine_mode,
                "policy_engine_mode",
                PolicyEngineMode::parse,
                rid,
            )?,
            invalid_response_action: parse_choice::<pb::InvalidResponseAction, _>(
                invalid_response_action,
                "invalid_response_action",
                InvalidResponseAction::parse,
                rid,
            )?,
            fsb_uuid: filter(fsb_uuid).map(Into::into),
            pbm_uuid: filter(pbm_uuid).map(Into::into),
            search: filter(search),
        };
        let params = list_params(page, page_size, ordering, rid)?;
        let found = self.flows.list_bindings(&ctx, filter_by, params.clone()).await.map_err(fail(rid))?;
        Ok(Response::new(pb::ListBindingsResponse {
            pagination: Some(pagination(&params, found.total, found.items.len())),
            results: found.items.into_iter().map(binding_to_pb).collect(),
            autocomplete: autocomplete(),
        }))
    }

    async fn create_binding(
        &self,
        req: Request<pb::CreateBindingRequest>,
    ) -> Result<Response<pb::CreateBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::CreateBindingRequest { binding } = req.into_inner();
        let view = self.flows.create_binding(&ctx, binding_input(binding, rid)?).await.map_err(fail(rid))?;
        Ok(Response::new(pb::CreateBindingResponse { binding: Some(binding_to_pb(view)) }))
    }

    async fn get_binding(
        &self,
        req: Request<pb::GetBindingRequest>,
    ) -> Result<Response<pb::GetBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::GetBindingRequest { fsb_uuid } = req.into_inner();
        let view = self.flows.get_binding(&ctx, &fsb_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::GetBindingResponse { binding: Some(binding_to_pb(view)) }))
    }

    async fn update_binding(
        &self,
        req: Request<pb::UpdateBindingRequest>,
    ) -> Result<Response<pb::UpdateBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::UpdateBindingRequest { fsb_uuid, binding } = req.into_inner();
        let input = binding_input(binding, rid)?;
        let view = self.flows.update_binding(&ctx, &fsb_uuid, input).await.map_err(fail(rid))?;
        Ok(Response::new(pb::UpdateBindingResponse { binding: Some(binding_to_pb(view)) }))
    }

    async fn patch_binding(
        &self,
        req: Request<pb::PatchBindingRequest>,
    ) -> Result<Response<pb::PatchBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::PatchBindingRequest { fsb_uuid, binding, update_mask } = req.into_inner();
        let mask = mask_paths(update_mask, "binding");
        let input = binding_input(binding, rid)?;
        let view = self.flows.patch_binding(&ctx, &fsb_uuid, input, &mask).await.map_err(fail(rid))?;
        Ok(Response::new(pb::PatchBindingResponse { binding: Some(binding_to_pb(view)) }))
    }

    async fn delete_binding(
        &self,
        req: Request<pb::DeleteBindingRequest>,
    ) -> Result<Response<pb::DeleteBindingResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::DeleteBindingRequest { fsb_uuid } = req.into_inner();
        self.flows.delete_binding(&ctx, &fsb_uuid).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::DeleteBindingResponse {}))
    }
}
