"""moto_server with two ECS behaviours moto 5.2.5 leaves out, both as the ECS API reference
describes them:

- UpdateService with a new task definition starts a deployment that becomes the service's
  PRIMARY deployment; here it completes at once (moto keeps the old deployment, so a rollout
  never ends). The services of the test rack run no tasks (desired count 0).
- RegisterTaskDefinition returns the tags of the new revision (as stored) next to it.

Run as `python ecs_rollouts.py -H 127.0.0.1 -p PORT`, with moto[server] installed.
"""

import sys

from moto.core.utils import utcnow
from moto.ecs import models, responses
from moto.moto_api._internal import mock_random

_update_service = models.EC2ContainerServiceBackend.update_service
_register = responses.EC2ContainerServiceResponse.register_task_definition


def update_service(self, service_properties):
    task_definition = service_properties.get("task_definition")
    service = _update_service(self, service_properties)
    if task_definition and service.deployments:
        now = utcnow()
        deployment = dict(service.deployments[0])
        deployment_id = f"ecs-svc/{mock_random.randint(0, 32**12)}"
        deployment.update(
            id=deployment_id,
            taskDefinition=service.task_definition,
            createdAt=now,
            updatedAt=now,
            rolloutState="COMPLETED",
            rolloutStateReason=f"ECS deployment {deployment_id} completed.",
        )
        service.deployments = [deployment]
    return service


def register_task_definition(self):
    result = _register(self)
    stored = self.ecs_backend.list_tags_for_resource(result.result["taskDefinition"].arn)
    return responses.ActionResult({**result.result, "tags": stored})


models.EC2ContainerServiceBackend.update_service = update_service
responses.EC2ContainerServiceResponse.register_task_definition = register_task_definition

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
