//! The workflow tools: argument validation and answers. The scheduler checks the workflow's
//! shape (phases, dependencies, draft state); this module checks the arguments themselves.

use uuid::Uuid;

use super::{
    in_range, invalid, validate_webhook_url, Core, Result, Service, ServiceError, MAX_OFFSET,
};
use crate::agents::validate_name;
use crate::api::*;
use crate::model::{now_us, rfc3339, Workflow, WorkflowStatus};

pub(super) fn parse_workflow_id(s: &str) -> Result<Uuid> {
    super::parse_uuid(s).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "workflow_id: {s:?} is not a workflow id; workflow ids are UUIDs as returned by workflow_create"
        ))
    })
}

/// A name of 1-200 characters, not all blank (as the API documents it), trimmed.
pub(super) fn display_name(field: &str, s: &str) -> Result<String> {
    let trimmed = s.trim();
    if super::is_blank(s) || s.chars().count() > 200 {
        return invalid(format!(
            "{field} must be 1-200 characters, not all blank, e.g. \"review auth.rs\""
        ));
    }
    Ok(trimmed.to_string())
}

impl Service {
    pub async fn workflow_create(&self, a: WorkflowCreateArgs) -> Result<WorkflowCreated> {
        let name = display_name("name", &a.name)?;
        let description = match a.description {
            Some(d) if d.chars().count() > 10_000 => {
                return invalid("description is longer than 10000 characters")
            }
            d => d.filter(|d| !d.trim().is_empty()),
        };
        let webhook_url = a
            .webhook_url
            .as_deref()
            .map(validate_webhook_url)
            .transpose()?;
        let max_parallel = match a.max_parallel {
            None => None,
            Some(_) => Some(in_range("max_parallel", a.max_parallel, 1, 1024, 1)? as u32),
        };
        let wf = Workflow {
            id: Uuid::now_v7(),
            name,
            description,
            webhook_url,
            status: WorkflowStatus::Draft,
            max_parallel,
            error: None,
            created_us: now_us(),
            started_us: None,
            completed_us: None,
        };
        let wf = match &self.core {
            Core::Local(s) => s.create_workflow(wf).await?,
            Core::Cluster(c) => c.create_workflow(wf).await?,
        };
        Ok(WorkflowCreated {
            workflow_id: wf.id.to_string(),
            name: wf.name,
            status: wf.status,
            created_at: rfc3339(wf.created_us),
        })
    }

    pub async fn workflow_add_phase(&self, a: WorkflowAddPhaseArgs) -> Result<PhaseView> {
        let id = parse_workflow_id(&a.workflow_id)?;
        validate_name("phase_id", &a.phase_id).map_err(ServiceError::Invalid)?;
        let name = display_name("name", &a.name)?;
        let deps = a.depends_on.unwrap_or_default();
        for d in &deps {
            validate_name("phase_id in depends_on", d).map_err(ServiceError::Invalid)?;
        }
        let p = match &self.core {
            Core::Local(s) => s.add_phase(id, a.phase_id, name, deps).await?,
            Core::Cluster(c) => c.add_phase(id, a.phase_id, name, deps).await?,
        };
        Ok(PhaseView {
            workflow_id: p.workflow_id.to_string(),
            phase_id: p.phase_id,
            name: p.name,
            status: p.status,
            depends_on: p.depends_on,
        })
    }

    pub async fn workflow_add_task(&self, a: WorkflowAddTaskArgs) -> Result<WorkflowTaskAdded> {
        let id = parse_workflow_id(&a.workflow_id)?;
        validate_name("phase_id", &a.phase_id).map_err(ServiceError::Invalid)?;
        // A missing workflow is a 404 before anything its task names is looked up.
        self.workflow_or_not_found(id).await?;
        let (mut task, instructions, agent) = self
            .build_task(TaskAsyncArgs {
                name: a.name,
                agent_name: a.agent_name,
                agent_instructions: a.agent_instructions,
                priority: a.priority,
                timeout_seconds: a.timeout_seconds,
                max_retries: a.max_retries,
                dependencies: a.dependencies,
                working_dir: a.working_dir,
                isolation: a.isolation,
                base_ref: a.base_ref,
                metadata: a.metadata,
                ..TaskAsyncArgs::default()
            })
            .await
            // What the body names and is not there (an agent, a directory, a revision) is a
            // conflict with the workflow's task; a 404 would say the workflow is not there.
            .map_err(|e| match e {
                ServiceError::NotFound(m) => ServiceError::Conflict(m),
                e => e,
            })?;
        task.workflow_id = Some(id);
        task.phase_id = Some(a.phase_id);
        let t = match &self.core {
            Core::Local(s) => s.add_workflow_task(task, instructions).await?,
            Core::Cluster(c) => {
                c.add_workflow_task(super::cluster_task(c, task, instructions, None, &agent)?)
                    .await?
            }
        };
        Ok(WorkflowTaskAdded {
            task_id: t.id.to_string(),
            workflow_id: id.to_string(),
            phase_id: t.phase_id.unwrap_or_default(),
            status: t.status,
        })
    }

    pub async fn workflow_start(&self, a: WorkflowIdArgs) -> Result<WorkflowStatusView> {
        let id = parse_workflow_id(&a.workflow_id)?;
        match &self.core {
            Core::Local(s) => s.start_workflow(id).await?,
            Core::Cluster(c) => c.start_workflow(id).await?,
        }
        self.workflow_view(id).await
    }

    pub async fn workflow_status(&self, a: WorkflowIdArgs) -> Result<WorkflowStatusView> {
        let id = parse_workflow_id(&a.workflow_id)?;
        self.workflow_view(id).await
    }

    pub async fn workflow_cancel(&self, a: WorkflowIdArgs) -> Result<WorkflowStatusView> {
        let id = parse_workflow_id(&a.workflow_id)?;
        match &self.core {
            Core::Local(s) => s.cancel_workflow(id).await?,
            Core::Cluster(c) => c.cancel_workflow(id).await?,
        }
        self.workflow_view(id).await
    }

    pub async fn list_workflows(&self, a: ListWorkflowsArgs) -> Result<WorkflowList> {
        let status = match a.status.as_deref() {
            None => None,
            Some(s) => Some(WorkflowStatus::parse(s).ok_or_else(|| {
                ServiceError::Invalid(format!(
                    "status {s:?} is not one of draft, running, completed, failed, cancelled"
                ))
            })?),
        };
        let limit = in_range("limit", a.limit, 1, 1000, 50)? as u32;
        let offset = in_range("offset", a.offset, 0, MAX_OFFSET, 0)? as u64;
        let (rows, total) = match &self.core {
            Core::Local(s) => s.store().list_workflows(status, limit, offset).await?,
            Core::Cluster(c) => c.list_workflows(status, limit, offset).await?,
        };
        Ok(WorkflowList {
            workflows: rows
                .into_iter()
                .map(|r| WorkflowSummaryView {
                    workflow_id: r.workflow.id.to_string(),
                    name: r.workflow.name,
                    status: r.workflow.status,
                    progress: progress(r.tasks_completed, r.tasks_total),
                    tasks_total: r.tasks_total,
                    tasks_completed: r.tasks_completed,
                    created_at: rfc3339(r.workflow.created_us),
                    started_at: r.workflow.started_us.map(rfc3339),
                    completed_at: r.workflow.completed_us.map(rfc3339),
                })
                .collect(),
            total,
        })
    }

    /// The tasks of one workflow, paged as `list_tasks` (REST `GET /api/workflows/{id}/tasks`);
    /// an unknown workflow is a not-found, not an empty list.
    pub async fn workflow_tasks(
        &self,
        workflow_id: &str,
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> Result<TaskList> {
        let id = parse_workflow_id(workflow_id)?;
        self.workflow_or_not_found(id).await?;
        self.list_tasks(ListTasksArgs {
            workflow_id: Some(id.to_string()),
            limit,
            offset,
            ..ListTasksArgs::default()
        })
        .await
    }

    pub(super) async fn workflow_or_not_found(&self, id: Uuid) -> Result<Workflow> {
        let found = match &self.core {
            Core::Local(s) => s.store().workflow(id).await?,
            Core::Cluster(c) => c.workflow(id).await?,
        };
        found.ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "unknown workflow_id {id}: no such workflow (list_workflows shows the workflows there are)"
                ))
            })
    }

    /// The workflow status object, read from the store (the durable truth).
    async fn workflow_view(&self, id: Uuid) -> Result<WorkflowStatusView> {
        let wf = self.workflow_or_not_found(id).await?;
        let (phases, tasks) = match &self.core {
            Core::Local(s) => (
                s.store().phases(id).await?,
                s.store().workflow_task_rows(id).await?,
            ),
            Core::Cluster(c) => (c.phases(id).await?, c.workflow_task_rows(id).await?),
        };
        Ok(status_view(&wf, &phases, tasks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_not_workflow_ids() {
        assert!(parse_workflow_id("nope").is_err());
        assert!(parse_workflow_id(" 0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69 ").is_ok());
    }
}
