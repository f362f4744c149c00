//! Observing the rack at the least cost: each look reads the stack and the services
//! (`DescribeStacks` and `DescribeServices`, at the same time); the stack's resources and its
//! template again only once the stack has settled after a change, each task definition
//! revision once, and tasks only where the deployments cannot decide ([`crate::plan::reads`]).
//! While a service rolls on a settled stack, a look may be light: the services only, the
//! stack as the last look read it ([`reads::light_look`]); [`Observer::complete`] reads the
//! stack when the decisions of such a look need it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{
    ManagedParam, ObservedRack, ObservedService, ServiceSnapshot, ServiceTarget, StackSnapshot,
    StackState, TaskDefinitionInfo, UpdateEvents, UpdateToken, MANAGED_PARAMS,
};
use crate::plan::reads::{self, TaskMemory, TaskNeed};
use crate::rack::{Rack, RackError};
use crate::spec::Declarations;

/// Task definition revisions kept beyond those in use (revisions are immutable, a few hundred
/// bytes each): a service rolled back and forth reads none of them again.
const KEPT_UNUSED: usize = 32;

/// The state of the stack something was read of (its resources, its template).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    last_updated: Option<String>,
    settled: bool,
}

impl Seen {
    fn of(stack: &StackSnapshot) -> Seen {
        Seen {
            last_updated: stack.last_updated.clone(),
            settled: stack.state() != StackState::InProgress,
        }
    }

    /// Whether what was read is to be read again: once the stack has settled after another
    /// update, or after the update it was read during. While CloudFormation updates the
    /// stack, it is still changing; the earlier reading stands until it is done (a rollback
    /// included). A stack without a known last update is always read again.
    fn outdated(&self, stack: &StackSnapshot) -> bool {
        let now = Seen::of(stack);
        now.last_updated.is_none() || (now.settled && *self != now)
    }
}

/// Where the target services are: the cluster and the service names.
#[derive(Debug, Clone)]
struct Located {
    /// The stack when they were read.
    seen: Seen,
    cluster: String,
    names: Vec<String>,
}

/// What the last look that read the stack found of it, and who started its latest update:
/// what a light look goes on from (with the declarations kept for that stack).
#[derive(Debug, Clone)]
struct StackRead {
    stack: StackSnapshot,
    at: SystemTime,
    update: UpdateEvents,
}

/// Reads what the planner needs and remembers what does not change between looks.
pub struct Observer {
    rack: Arc<dyn Rack>,
    targets: Vec<ServiceTarget>,
    cluster_resource: String,
    located: Option<Located>,
    /// The running template's declarations, with the stack they were read of, and whether
    /// they were read from its body (or only from the stack's parameter names).
    declared: Option<(Seen, Declarations, bool)>,
    /// The params file holds a parameter whose values only the template body can check.
    template_needed: bool,
    revisions: HashMap<String, TaskDefinitionInfo>,
    /// Revisions in the order first read, to let go of the oldest unused ones.
    read_order: Vec<String>,
    /// Per target (logical id): what the tasks proved, and what rollouts showed.
    tasks: BTreeMap<String, TaskMemory>,
    /// What the events told of the stack's latest update, by the stack's last update time
    /// (one update, one token: read once, and once more when it starts rolling back).
    update: Option<(Option<String>, UpdateEvents)>,
    /// The value of a managed label the params file asks for: a service whose revision does
    /// not hold it has not converged whatever its tasks run, so they are not listed.
    wanted: Option<(&'static ManagedParam, String)>,
    /// The stack as the last look that read it found it.
    stack_read: Option<StackRead>,
    /// The last look saw a target service moving (rolling, or another deployment listed).
    moved: bool,
}

impl Observer {
    pub fn new(rack: Arc<dyn Rack>, targets: Vec<ServiceTarget>, cluster_resource: String) -> Self {
        Observer {
            rack,
            targets,
            cluster_resource,
            located: None,
            declared: None,
            revisions: HashMap::new(),
            read_order: Vec::new(),
            tasks: BTreeMap::new(),
            update: None,
            wanted: None,
            template_needed: true,
            stack_read: None,
            moved: false,
        }
    }

    /// Whether the params file holds a parameter only the template body can check (any but
    /// the managed ones, whose values are known): without one, the template is not read.
    pub fn need_template(&mut self, needed: bool) {
        self.template_needed = needed;
    }

    /// The value of a managed label the params file asks for (`None`: none, or not known):
    /// the tasks of a settled service whose revision lacks it are not listed.
    pub fn want(&mut self, wanted: Option<(&'static ManagedParam, String)>) {
        self.wanted = wanted;
    }

    /// A service was just pointed at another revision (`UpdateService`): it rolls, though
    /// the look that decided it saw it still.
    pub fn rolling(&mut self) {
        self.moved = true;
    }

    /// Observes everything the planner needs; only the services when `light` allows it and
    /// [`reads::light_look`] says so (the observation says it is light).
    pub async fn observe(
        &mut self,
        now: SystemTime,
        light: bool,
    ) -> Result<ObservedRack, RackError> {
        if light {
            if let Some(observed) = self.light(now).await? {
                return Ok(observed);
            }
        }
        let (stack, located, services) = self.stack_and_services().await?;
        let services = self.services(&located.cluster, services, now).await?;
        self.with_stack(stack, located.cluster, services, now).await
    }

    /// A light look made whole: the stack read, and with it what the look left as the last
    /// look read it. The services stand when the stack is as that look found it.
    pub async fn complete(
        &mut self,
        observed: ObservedRack,
        now: SystemTime,
    ) -> Result<ObservedRack, RackError> {
        if !observed.light {
            return Ok(observed);
        }
        let stack = self.rack.describe_stack().await?;
        let same = self
            .stack_read
            .as_ref()
            .is_some_and(|r| Seen::of(&r.stack) == Seen::of(&stack));
        if same {
            return self
                .with_stack(stack, observed.cluster, observed.services, now)
                .await;
        }
        // The stack has changed since: the services are read again, and located again only
        // once it has settled (as [`Self::stack_and_services`] does).
        let (stack, located, services) = match self.located.clone() {
            Some(known) if !known.seen.outdated(&stack) => {
                let services = self
                    .rack
                    .describe_services(&known.cluster, &known.names)
                    .await;
                self.where_they_are(stack, known, services).await?
            }
            _ => self.relocate(stack, None).await?,
        };
        let services = self.services(&located.cluster, services, now).await?;
        self.with_stack(stack, located.cluster, services, now).await
    }

    /// The services only, when the last look allows a light one: `None` when it does not, or
    /// when a service is not where it was (a look reads the stack then).
    async fn light(&mut self, now: SystemTime) -> Result<Option<ObservedRack>, RackError> {
        let (Some(read), Some(located), Some((_, declared, _))) = (
            self.stack_read.clone(),
            self.located.clone(),
            self.declared.clone(),
        ) else {
            return Ok(None);
        };
        if !reads::light_look(&read.stack, read.at, self.moved, now) {
            return Ok(None);
        }
        let services = match self
            .rack
            .describe_services(&located.cluster, &located.names)
            .await
        {
            Ok(services) if services.iter().all(|s| s.status == "ACTIVE") => services,
            Ok(_) | Err(RackError::ServiceNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let services = self.services(&located.cluster, services, now).await?;
        Ok(Some(ObservedRack {
            declared,
            stack: read.stack,
            cluster: located.cluster,
            services,
            update_token: read.update.token,
            rollback_since: read.update.rollback_since,
            light: true,
        }))
    }

    /// The services with their revisions' labels and the tasks this look needs.
    async fn services(
        &mut self,
        cluster: &str,
        services: Vec<ServiceSnapshot>,
        now: SystemTime,
    ) -> Result<Vec<ObservedService>, RackError> {
        let mut services = self.label(services).await?;
        self.read_tasks(cluster, &mut services, now).await?;
        self.moved = services.iter().any(|s| reads::moving(&s.service));
        Ok(services)
    }

    /// The observation of a look that read `stack`: with what its template declares and who
    /// started its latest update.
    async fn with_stack(
        &mut self,
        stack: StackSnapshot,
        cluster: String,
        services: Vec<ObservedService>,
        now: SystemTime,
    ) -> Result<ObservedRack, RackError> {
        let declared = self.declarations(&stack).await?;
        let update = self.update_events(&stack).await;
        self.stack_read = Some(StackRead {
            stack: stack.clone(),
            at: now,
            update: update.clone(),
        });
        Ok(ObservedRack {
            declared,
            stack,
            cluster,
            services,
            update_token: update.token,
            rollback_since: update.rollback_since,
            light: false,
        })
    }

    /// Who started the stack's latest update, where it decides something (an update under
    /// way, a rollback, a broken stack): read from its events once per update. A failed read
    /// makes it unknown for this look, not the look failed.
    async fn update_events(&mut self, stack: &StackSnapshot) -> UpdateEvents {
        if !UpdateToken::needed(stack) {
            return UpdateEvents::default();
        }
        let rolling_back = stack.status.contains("ROLLBACK");
        if let Some((at, known)) = &self.update {
            let same = *at == stack.last_updated && stack.last_updated.is_some();
            if same && (known.rollback_since.is_some() || !rolling_back) {
                return known.clone();
            }
        }
        match self.rack.latest_update().await {
            Ok(read) => {
                if matches!(read.token, UpdateToken::Read(_)) {
                    self.update = Some((stack.last_updated.clone(), read.clone()));
                }
                read
            }
            Err(e) => UpdateEvents {
                token: UpdateToken::Unknown(format!(
                    "cannot read the events of stack {} to tell whose update it is: {e}",
                    stack.name
                )),
                rollback_since: None,
            },
        }
    }

    /// When to look again while the targets roll (see [`reads::poll_delay`]); `None` when
    /// none rolls. The first-task time is the shortest any of them showed: the rack API's
    /// services run the same image on the same instances.
    pub fn poll_delay(
        &self,
        observed: &ObservedRack,
        now: SystemTime,
        max: Duration,
    ) -> Option<Duration> {
        let first_task = self.tasks.values().filter_map(|m| m.first_task).min();
        observed
            .services
            .iter()
            .filter_map(|s| reads::poll_delay(&s.service, first_task, now, max))
            .min()
    }

    /// A revision the controller registered or found: known without a describe.
    pub fn learn(&mut self, info: TaskDefinitionInfo) {
        if !self.revisions.contains_key(&info.arn) {
            self.read_order.push(info.arn.clone());
        }
        self.revisions.insert(info.arn.clone(), info);
    }

    /// The stack and the services, read at the same time once the services are located;
    /// the stack's resources are listed again once the stack has settled after a change, and
    /// when a service is not where they said or not `ACTIVE` (CloudFormation may have
    /// replaced it).
    async fn stack_and_services(
        &mut self,
    ) -> Result<(StackSnapshot, Located, Vec<ServiceSnapshot>), RackError> {
        let Some(known) = self.located.clone() else {
            let stack = self.rack.describe_stack().await?;
            return self.relocate(stack, None).await;
        };
        let (stack, services) = tokio::join!(
            self.rack.describe_stack(),
            self.rack.describe_services(&known.cluster, &known.names)
        );
        self.where_they_are(stack?, known, services).await
    }

    /// The services read where they were `known` to be, when that still holds for `stack`:
    /// else located anew.
    async fn where_they_are(
        &mut self,
        stack: StackSnapshot,
        known: Located,
        services: Result<Vec<ServiceSnapshot>, RackError>,
    ) -> Result<(StackSnapshot, Located, Vec<ServiceSnapshot>), RackError> {
        match services {
            Ok(services)
                if !known.seen.outdated(&stack)
                    && services.iter().all(|s| s.status == "ACTIVE") =>
            {
                Ok((stack, known, services))
            }
            Ok(services) => self.relocate(stack, Some((known, services))).await,
            Err(RackError::ServiceNotFound { .. }) => self.relocate(stack, None).await,
            Err(e) => Err(e),
        }
    }

    /// Lists the stack's resources anew; the services read with the old ones still stand when
    /// their names have not changed.
    async fn relocate(
        &mut self,
        stack: StackSnapshot,
        read: Option<(Located, Vec<ServiceSnapshot>)>,
    ) -> Result<(StackSnapshot, Located, Vec<ServiceSnapshot>), RackError> {
        self.located = None;
        let located = self.locate(&stack).await?;
        let services = match read {
            Some((before, services))
                if before.cluster == located.cluster && before.names == located.names =>
            {
                services
            }
            _ => {
                self.rack
                    .describe_services(&located.cluster, &located.names)
                    .await?
            }
        };
        self.located = Some(located.clone());
        Ok((stack, located, services))
    }

    /// The cluster and the target services: the cluster from the stack's output of the same
    /// name as its resource when there is one (the rack template's `Cluster` output is
    /// `Ref: Cluster`), each service and otherwise the cluster from `DescribeStackResource`.
    async fn locate(&self, stack: &StackSnapshot) -> Result<Located, RackError> {
        let cluster = match stack.outputs.get(&self.cluster_resource) {
            Some(name) if !name.is_empty() => name.clone(),
            _ => self.rack.stack_resource(&self.cluster_resource).await?,
        };
        let mut names = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            names.push(self.rack.stack_resource(&t.service).await?);
        }
        Ok(Located {
            seen: Seen::of(stack),
            cluster,
            names,
        })
    }

    /// Fills in each service's tasks: read in one batch where the deployments cannot decide,
    /// taken from a standing proof otherwise; not listed for a settled service whose revision
    /// lacks the wanted value (it is to change, whatever its tasks run).
    async fn read_tasks(
        &mut self,
        cluster: &str,
        services: &mut [ObservedService],
        now: SystemTime,
    ) -> Result<(), RackError> {
        let needs: Vec<TaskNeed> = services
            .iter()
            .map(|s| {
                let memory = self
                    .tasks
                    .get(&s.target.service)
                    .cloned()
                    .unwrap_or_default();
                match reads::task_need(&s.service, &memory, now) {
                    TaskNeed::Read {
                        running: true,
                        stopped: false,
                    } if self.lacks(s) => TaskNeed::Known(Default::default()),
                    need => need,
                }
            })
            .collect();
        let asked: Vec<(usize, _)> = needs
            .iter()
            .enumerate()
            .filter_map(|(i, n)| reads::task_read(&services[i].service.name, n).map(|r| (i, r)))
            .collect();
        if !asked.is_empty() {
            let reads: Vec<_> = asked.iter().map(|(_, r)| r.clone()).collect();
            let found = self.rack.service_tasks(cluster, &reads).await?;
            for ((i, _), tasks) in asked.iter().zip(found) {
                services[*i].service.tasks = tasks.running;
                services[*i].service.stopped = tasks.stopped;
            }
        }
        for (s, need) in services.iter_mut().zip(&needs) {
            if let TaskNeed::Known(known) = need {
                s.service.tasks = known.running.clone();
                s.service.stopped = known.stopped.clone();
            }
            let memory = self.tasks.entry(s.target.service.clone()).or_default();
            reads::remember(memory, &s.service, need, now);
        }
        Ok(())
    }

    /// The service's primary revision does not hold the wanted value.
    fn lacks(&self, s: &ObservedService) -> bool {
        let Some((param, value)) = &self.wanted else {
            return false;
        };
        let primary = s.service.primary();
        primary.is_some_and(|p| s.value_in(&p.task_definition, param) != Some(value.as_str()))
    }

    /// Each service with the managed labels of every revision it references, each revision
    /// read once.
    async fn label(
        &mut self,
        services: Vec<ServiceSnapshot>,
    ) -> Result<Vec<ObservedService>, RackError> {
        let mut referenced = HashSet::new();
        let mut observed = Vec::with_capacity(services.len());
        for (target, service) in self.targets.clone().into_iter().zip(services) {
            let mut labels = BTreeMap::new();
            for arn in service.task_definitions() {
                referenced.insert(arn.to_string());
                if !labels.contains_key(arn) {
                    labels.insert(arn.to_string(), self.revision(arn).await?.labels);
                }
            }
            observed.push(ObservedService {
                target,
                service,
                labels,
            });
        }
        self.let_go(&referenced);
        Ok(observed)
    }

    /// A revision's identity and labels, described the first time only.
    async fn revision(&mut self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        if let Some(info) = self.revisions.get(arn) {
            return Ok(info.clone());
        }
        let info = self.rack.describe_task_definition(arn).await?;
        self.learn(info.clone());
        Ok(info)
    }

    /// Keeps the revisions in use and the [`KEPT_UNUSED`] latest others.
    fn let_go(&mut self, referenced: &HashSet<String>) {
        let unused = self
            .read_order
            .iter()
            .filter(|a| !referenced.contains(*a))
            .count();
        let mut drop = unused.saturating_sub(KEPT_UNUSED);
        let revisions = &mut self.revisions;
        self.read_order.retain(|a| {
            if drop > 0 && !referenced.contains(a) {
                drop -= 1;
                revisions.remove(a);
                return false;
            }
            true
        });
    }

    /// What the running template declares, read again once the stack has settled after a
    /// change; from the stack's parameter names alone while the params file holds nothing
    /// else to check.
    async fn declarations(&mut self, stack: &StackSnapshot) -> Result<Declarations, RackError> {
        if let Some((seen, declared, read)) = &self.declared {
            if !seen.outdated(stack) && (*read || !self.template_needed) {
                return Ok(declared.clone());
            }
        }
        if !self.template_needed {
            // The stack's parameters are the ones its template declares.
            let known: Vec<(&str, &[&str])> =
                MANAGED_PARAMS.iter().map(|p| (p.name, p.allowed)).collect();
            let declared = Declarations::of_names(stack.parameters.keys(), &known);
            self.declared = Some((Seen::of(stack), declared.clone(), false));
            return Ok(declared);
        }
        let declared = self.rack.stack_declarations().await?;
        self.declared = Some((Seen::of(stack), declared.clone(), true));
        Ok(declared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(status: &str, last_updated: Option<&str>) -> StackSnapshot {
        StackSnapshot {
            name: "convox".into(),
            status: status.into(),
            status_reason: None,
            parameters: BTreeMap::new(),
            outputs: BTreeMap::new(),
            last_updated: last_updated.map(str::to_string),
        }
    }

    #[test]
    #[rustfmt::skip]
    fn what_was_read_of_the_stack_is_read_again_once_it_settles_after_a_change() {
        let settled = Seen::of(&stack("UPDATE_COMPLETE", Some("1")));
        let during = Seen::of(&stack("UPDATE_IN_PROGRESS", Some("2")));
        let cases = [
            ("unchanged", &settled, stack("UPDATE_COMPLETE", Some("1")), false),
            ("another update under way", &settled, stack("UPDATE_IN_PROGRESS", Some("2")), false),
            ("its rollback under way", &settled, stack("UPDATE_ROLLBACK_IN_PROGRESS", Some("2")), false),
            ("settled after another update", &settled, stack("UPDATE_COMPLETE", Some("2")), true),
            ("rolled back", &settled, stack("UPDATE_ROLLBACK_COMPLETE", Some("2")), true),
            ("read during an update, still under way", &during, stack("UPDATE_IN_PROGRESS", Some("2")), false),
            ("read during an update, now settled", &during, stack("UPDATE_COMPLETE", Some("2")), true),
            ("no last update known", &settled, stack("UPDATE_COMPLETE", None), true),
        ];
        for (name, seen, now, want) in cases {
            assert_eq!(seen.outdated(&now), want, "{name}");
        }
    }
}
