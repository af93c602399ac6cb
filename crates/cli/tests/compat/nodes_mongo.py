"""The MongoDB dialects across the nodes of one deployment: Tencent's SDK
(tencentcloud-sdk-python, mongodb 2019-07-25) and Alibaba's dds SDK (Tea),
each call sent to another node than the one before. ENDPOINTS (three
host:port, comma-separated), AK, SK, CMGO (a cmgo- replica set instance),
DDS (a dds- replica set instance), both registered through the first node."""

import os
import time

from alibabacloud_dds20151201 import models as dds
from alibabacloud_dds20151201.client import Client
from alibabacloud_tea_openapi import models as open_api
from darabonba.runtime import RuntimeOptions
from links import fetch_tar
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.mongodb.v20190725 import models, mongodb_client

ENDPOINTS = os.environ["ENDPOINTS"].split(",")
AK, SK, CMGO, DDS = os.environ["AK"], os.environ["SK"], os.environ["CMGO"], os.environ["DDS"]
assert len(ENDPOINTS) == 3, ENDPOINTS
RT = RuntimeOptions()


def tc(node):
    hp = HttpProfile(protocol="http", endpoint=ENDPOINTS[node])
    return mongodb_client.MongodbClient(credential.Credential(AK, SK), "ap-guangzhou", ClientProfile(httpProfile=hp))


def tc_call(node, action, **params):
    req = getattr(models, action + "Request")()
    req._deserialize(params)
    while True:
        try:
            return getattr(tc(node), action)(req)
        except TencentCloudSDKException as e:
            # The third node allows 3 requests/s per key.
            if e.code != "RequestLimitExceeded":
                raise
            time.sleep(1)


def until(what, f, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        r = f()
        if r:
            return r
        time.sleep(0.4)
    raise AssertionError("timed out waiting for " + what)


# Tencent: listed by every node; a backup asked of the second node, followed
# on the third, its set listed by the first.
for node in range(3):
    r = tc_call(node, "DescribeDBInstances", InstanceIds=[CMGO])
    assert [d.InstanceId for d in r.InstanceDetails] == [CMGO], r.to_json_string()
async_id = tc_call(1, "CreateBackupDBInstance", InstanceId=CMGO, BackupMethod=0).AsyncRequestId
done = until("the Tencent backup", lambda: (lambda r: r if r.Status in ("success", "failed") else None)(
    tc_call(0, "DescribeAsyncRequestInfo", AsyncRequestId=async_id)))
assert done.Status == "success", done.to_json_string()
assert tc_call(2, "DescribeAsyncRequestInfo", AsyncRequestId=async_id).Status == "success"
backups = tc_call(2, "DescribeDBBackups", InstanceId=CMGO).BackupList
assert len(backups) == 1 and backups[0].Status == 2, [b.to_json_string() for b in backups]
name = backups[0].BackupName
# A download task asked of the first node, followed on the second, listed
# by the third with a link on the third (the URL names the host the caller
# used), fetched from it.
tc_call(0, "CreateBackupDownloadTask", InstanceId=CMGO, BackupName=name, BackupSets=[{"ReplicaSetId": f"{CMGO}_0"}])
until("the download task", lambda: (lambda t: t[0] if t and t[0].Status == 2 else None)(
    tc_call(1, "DescribeBackupDownloadTask", InstanceId=CMGO).Tasks))
[task] = tc_call(2, "DescribeBackupDownloadTask", InstanceId=CMGO).Tasks
assert task.Status == 2 and task.Url.startswith(f"http://{ENDPOINTS[2]}/"), task.to_json_string()
names, _ = fetch_tar(task.Url)
assert "oplog.bson" in names, names
print(f"tencent across nodes: backup {async_id}, download of {name} fetched from node 3")

# Alibaba dds: a backup asked of the third node, followed on the first,
# its set listed by the second with a link that the first serves.
def ali(node):
    return Client(open_api.Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINTS[node],
                                  protocol="HTTP", region_id="cn-hangzhou"))


created = ali(2).create_backup_with_options(dds.CreateBackupRequest(dbinstance_id=DDS), RT).body
job = created.backup_job_id


def job_done():
    body = ali(0).describe_backup_tasks_with_options(
        dds.DescribeBackupTasksRequest(dbinstance_id=DDS, backup_job_id=str(job)), RT).body
    j = body.backup_jobs[0]
    return j if j.backup_set_status in ("Finished", "Failed") else None


j = until("the dds backup", job_done)
assert j.backup_set_status == "Finished", j.to_map()
body = ali(1).describe_backups_with_options(dds.DescribeBackupsRequest(dbinstance_id=DDS), RT).body
[s] = body.backups.backup
assert s.backup_status == "Success" and s.backup_method == "Logical", s.to_map()
url = s.backup_download_url
assert url.startswith(f"http://{ENDPOINTS[1]}/"), url
names, _ = fetch_tar(url.replace(ENDPOINTS[1], ENDPOINTS[0], 1))
assert "oplog.bson" in names, names
print(f"dds across nodes: job {job}, set link of node 2 served by node 1")
print("all node SDK checks passed")
