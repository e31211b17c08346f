//! `FlowService`: flows, their used-by list, YAML export/import, diagram and plan cache.

use flowgate_core::flow::{
    DeniedAction, Designation, Flow, FlowFilter, FlowInput, FlowSpec, FlowView, ImportLog, ImportResult, UsedBy,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::{
    FlowApi, autocomplete, begin, choice_in, choice_out, fail, filter, list_params, mask_paths, pagination,
    parse_choice, pb,
};

/// The writable fields as sent; unspecified enums are "not sent".
fn flow_input(r: Option<pb::FlowRequest>, rid: Option<&str>) -> Result<FlowInput, Status> {
    let pb::FlowRequest {
        name,
        slug,
        title,
        designation,
        background,
        policy_engine_mode,
        compatibility_mode,
        layout,
        denied_action,
        authentication,
    } = r.unwrap_or_default();
    Ok(FlowInput {
        name,
        slug,
        title,
        designation: choice_in::<pb::FlowDesignation>(designation, "designation", rid)?,
        layout: choice_in::<pb::FlowLayout>(layout, "layout", rid)?,
        background: background.map(Some),
        compatibility_mode,
        denied_action: choice_in::<pb::DeniedAction>(denied_action, "denied_action", rid)?,
        authentication: choice_in::<pb::FlowAuthentication>(authentication, "authentication", rid)?,
        policy_engine_mode: choice_in::<pb::PolicyEngineMode>(policy_engine_mode, "policy_engine_mode", rid)?,
    })
}

/// The wire form of a flow with its computed fields.
pub(super) fn flow_to_pb(view: FlowView) -> pb::Flow {
    let FlowView { flow, stages, policies, cache_count } = view;
    let background_url = flow.background_url();
    let export_url = flow.export_url();
    let Flow { id, pbm_id, org_id: _, spec, details: _ } = flow;
    let FlowSpec {
        name,
        slug,
        title,
        designation,
        layout,
        background,
        compatibility_mode,
        denied_action,
        authentication,
        policy_engine_mode,
    } = spec;
    pb::Flow {
        pk: id.into_string(),
        policybindingmodel_ptr_id: pbm_id.into_string(),
        name,
        slug: slug.as_str().to_owned(),
        title,
        designation: choice_out::<pb::FlowDesignation>(designation.as_str()),
        background,
        background_url,
        // flowgate has no themed backgrounds: the key is written as null.
        background_themed_urls: None,
        stages: stages.into_iter().map(|s| s.into_string()).collect(),
        policies: policies.into_iter().map(|p| p.into_string()).collect(),
        cache_count: i32::try_from(cache_count).unwrap_or(i32::MAX),
        policy_engine_mode: choice_out::<pb::PolicyEngineMode>(policy_engine_mode.as_str()),
        compatibility_mode,
        export_url,
        layout: choice_out::<pb::FlowLayout>(layout.as_str()),
        denied_action: choice_out::<pb::DeniedAction>(denied_action.as_str()),
        authentication: choice_out::<pb::FlowAuthentication>(authentication.as_str()),
    }
}

/// A flow as embedded in a stage's `flow_set`.
pub(super) fn flow_set_to_pb(flow: Flow) -> pb::FlowSet {
    let background_url = flow.background_url();
    let export_url = flow.export_url();
    let Flow { id, pbm_id, org_id: _, spec, details: _ } = flow;
    let FlowSpec {
        name,
        slug,
        title,
        designation,
        layout,
        background,
        compatibility_mode,
        denied_action,
        authentication: _,
        policy_engine_mode,
    } = spec;
    pb::FlowSet {
        pk: id.into_string(),
        policybindingmodel_ptr_id: pbm_id.into_string(),
        name,
        slug: slug.as_str().to_owned(),
        title,
        designation: choice_out::<pb::FlowDesignation>(designation.as_str()),
        background,
        background_url,
        policy_engine_mode: choice_out::<pb::PolicyEngineMode>(policy_engine_mode.as_str()),
        compatibility_mode,
        export_url,
        layout: choice_out::<pb::FlowLayout>(layout.as_str()),
        denied_action: choice_out::<pb::DeniedAction>(denied_action.as_str()),
    }
}

fn used_by_to_pb(u: UsedBy) -> pb::UsedBy {
    let UsedBy { app, model_name, pk, name, action } = u;
    pb::UsedBy { app, model_name, pk, name, action: choice_out::<pb::UsedByAction>(action.as_str()) }
}

fn log_to_pb(log: ImportLog, now: pbjson_types::Timestamp) -> pb::LogEvent {
    let ImportLog { event, attributes } = log;
    let fields = attributes
        .into_iter()
        .map(|(k, v)| (k, pbjson_types::Value { kind: Some(pbjson_types::value::Kind::StringValue(v)) }))
        .collect();
    pb::LogEvent {
        timestamp: Some(now),
        event,
        log_level: "info".to_owned(),
        logger: "flowgate.flow.import".to_owned(),
        attributes: Some(pbjson_types::Struct { fields }),
    }
}

#[tonic::async_trait]
impl pb::flow_service_server::FlowService for FlowApi {
    async fn list_flows(&self, req: Request<pb::ListFlowsRequest>) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::ListFlowsRequest {
            designation,
            slug,
            name,
            denied_action,
            flow_uuid,
            search,
            ordering,
            page,
            page_size,
        } = req.into_inner();
        let filter_by = FlowFilter {
            designation: parse_choice::<pb::FlowDesignation, _>(designation, "designation", Designation::parse, rid)?,
            slug: filter(slug),
            name: filter(name),
            denied_action: parse_choice::<pb::DeniedAction, _>(
                denied_action,
                "denied_action",
                DeniedAction::parse,
                rid,
            )?,
            flow_uuid: filter(flow_uuid).map(Into::into),
            search: filter(search),
        };
        let params = list_params(page, page_size, ordering, rid)?;
        let found = self.flows.list_flows(&ctx, filter_by, params.clone()).await.map_err(fail(rid))?;
        Ok(Response::new(pb::ListFlowsResponse {
            pagination: Some(pagination(&params, found.total, found.items.len())),
            results: found.items.into_iter().map(flow_to_pb).collect(),
            autocomplete: autocomplete(),
        }))
    }

    async fn create_flow(
        &self,
        req: Request<pb::CreateFlowRequest>,
    ) -> Result<Response<pb::CreateFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::CreateFlowRequest { flow } = req.into_inner();
        let view = self.flows.create_flow(&ctx, flow_input(flow, rid)?).await.map_err(fail(rid))?;
        Ok(Response::new(pb::CreateFlowResponse { flow: Some(flow_to_pb(view)) }))
    }

    async fn get_flow(&self, req: Request<pb::GetFlowRequest>) -> Result<Response<pb::GetFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::GetFlowRequest { slug } = req.into_inner();
        let view = self.flows.get_flow(&ctx, &slug).await.map_err(fail(rid))?;
        Ok(Response::new(pb::GetFlowResponse { flow: Some(flow_to_pb(view)) }))
    }

    async fn update_flow(
        &self,
        req: Request<pb::UpdateFlowRequest>,
    ) -> Result<Response<pb::UpdateFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::UpdateFlowRequest { slug, flow } = req.into_inner();
        let view = self.flows.update_flow(&ctx, &slug, flow_input(flow, rid)?).await.map_err(fail(rid))?;
        Ok(Response::new(pb::UpdateFlowResponse { flow: Some(flow_to_pb(view)) }))
    }

    async fn patch_flow(&self, req: Request<pb::PatchFlowRequest>) -> Result<Response<pb::PatchFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let rid = rid.as_deref();
        let pb::PatchFlowRequest { slug, flow, update_mask } = req.into_inner();
        let mask = mask_paths(update_mask, "flow");
        let view = self.flows.patch_flow(&ctx, &slug, flow_input(flow, rid)?, &mask).await.map_err(fail(rid))?;
        Ok(Response::new(pb::PatchFlowResponse { flow: Some(flow_to_pb(view)) }))
    }

    async fn delete_flow(
        &self,
        req: Request<pb::DeleteFlowRequest>,
    ) -> Result<Response<pb::DeleteFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::DeleteFlowRequest { slug } = req.into_inner();
        self.flows.delete_flow(&ctx, &slug).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::DeleteFlowResponse {}))
    }

    async fn flow_used_by(
        &self,
        req: Request<pb::FlowUsedByRequest>,
    ) -> Result<Response<pb::FlowUsedByResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::FlowUsedByRequest { slug } = req.into_inner();
        let used = self.flows.used_by(&ctx, &slug).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::FlowUsedByResponse { results: used.into_iter().map(used_by_to_pb).collect() }))
    }

    async fn export_flow(
        &self,
        req: Request<pb::ExportFlowRequest>,
    ) -> Result<Response<pb::ExportFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::ExportFlowRequest { slug } = req.into_inner();
        let yaml = self.flows.export_flow(&ctx, &slug).await.map_err(fail(rid.as_deref()))?;
        let mut response = Response::new(pb::ExportFlowResponse {
            file: Some(crate::pb::google::api::HttpBody {
                content_type: "application/yaml".to_owned(),
                data: yaml.into_bytes(),
                extensions: Vec::new(),
            }),
        });
        // The slug resolved to a stored flow, so it matches `^[-a-zA-Z0-9_]+$` and is a valid header value;
        // a download without a file name is still a download, so a failure here is not worth an error.
        if let Ok(value) = MetadataValue::try_from(format!("attachment; filename=\"{slug}.yaml\"")) {
            response.metadata_mut().insert("content-disposition", value);
        }
        Ok(response)
    }

    async fn import_flow(
        &self,
        req: Request<pb::ImportFlowRequest>,
    ) -> Result<Response<pb::ImportFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::ImportFlowRequest { file, clear } = req.into_inner();
        let ImportResult { success, logs } =
            self.flows.import_flow(&ctx, &file, clear).await.map_err(fail(rid.as_deref()))?;
        let now = crate::api::convert::timestamp(chrono::Utc::now());
        Ok(Response::new(pb::ImportFlowResponse {
            success,
            logs: logs.into_iter().map(|l| log_to_pb(l, now)).collect(),
        }))
    }

    async fn diagram_flow(
        &self,
        req: Request<pb::DiagramFlowRequest>,
    ) -> Result<Response<pb::DiagramFlowResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let pb::DiagramFlowRequest { slug } = req.into_inner();
        let diagram = self.flows.diagram(&ctx, &slug).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::DiagramFlowResponse { diagram }))
    }

    async fn cache_info(&self, req: Request<pb::CacheInfoRequest>) -> Result<Response<pb::CacheInfoResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        let count = self.flows.cache_info(&ctx).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::CacheInfoResponse { count: i32::try_from(count).unwrap_or(i32::MAX) }))
    }

    async fn cache_clear(
        &self,
        req: Request<pb::CacheClearRequest>,
    ) -> Result<Response<pb::CacheClearResponse>, Status> {
        let (ctx, rid) = begin(&req)?;
        self.flows.cache_clear(&ctx).await.map_err(fail(rid.as_deref()))?;
        Ok(Response::new(pb::CacheClearResponse {}))
    }
}
