//! `flowgate.system.v1.SystemService`.

use std::sync::Arc;

use flowgate_core::system::{self, Backend, BuildFacts, StoreStatus, SystemInfo};
use tonic::{Request, Response, Status};

use crate::error::to_status;
use crate::pb::flowgate::system::v1 as pb;

/// Adapter serving GetInfo from the build facts and the store.
pub struct SystemApi {
    facts: Arc<BuildFacts>,
    store: Arc<dyn StoreStatus>,
}

impl SystemApi {
    /// An adapter over the server's facts and store.
    pub fn new(facts: Arc<BuildFacts>, store: Arc<dyn StoreStatus>) -> Self {
        Self { facts, store }
    }
}

#[tonic::async_trait]
impl pb::system_service_server::SystemService for SystemApi {
    async fn get_info(&self, req: Request<pb::GetInfoRequest>) -> Result<Response<pb::GetInfoResponse>, Status> {
        let request_id = super::request_id(&req);
        let pb::GetInfoRequest {} = req.into_inner();
        let info = system::get_info(&self.facts, self.store.as_ref())
            .await
            .map_err(|e| to_status(&e, request_id.as_deref()))?;
        Ok(Response::new(info_to_pb(info)))
    }
}

fn info_to_pb(info: SystemInfo) -> pb::GetInfoResponse {
    let SystemInfo { version, commit, backend, schema_version, uptime, start_time, families } = info;
    pb::GetInfoResponse {
        version,
        commit,
        database_backend: match backend {
            Backend::Sqlite => pb::DatabaseBackend::Sqlite,
            Backend::Postgres => pb::DatabaseBackend::Postgres,
        }
        .into(),
        schema_version,
        uptime: Some(pbjson_types::Duration {
            seconds: i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(uptime.subsec_nanos()).unwrap_or(0),
        }),
        start_time: Some(pbjson_types::Timestamp {
            seconds: start_time.timestamp(),
            nanos: i32::try_from(start_time.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        api_families: families
            .into_iter()
            .map(|f| pb::ApiFamily { package: f.package, services: f.services, rest_dialect: f.rest_dialect })
            .collect(),
    }
}
