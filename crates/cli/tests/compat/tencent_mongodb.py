"""Tencent Cloud's official Python SDK (tencentcloud-sdk-python, mongodb
2019-07-25) against a running Stowage: both TC3 forms (POST JSON, GET) and
the legacy signatures, the response and error shapes the SDK reads.
ENDPOINT, AK, SK, RS (a cmgo- replica set instance), SHARDED (a cmgo-
sharded cluster of two shards)."""

import os

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.mongodb.v20190725 import models, mongodb_client

ENDPOINT, AK, SK = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"]
RS, SHARDED = os.environ["RS"], os.environ["SHARDED"]


def client(method="POST", sign=None, secret=SK, ak=AK):
    hp = HttpProfile(protocol="http", endpoint=ENDPOINT, reqMethod=method)
    cp = ClientProfile(httpProfile=hp)
    if sign:
        cp.signMethod = sign
    return mongodb_client.MongodbClient(credential.Credential(ak, secret), "ap-guangzhou", cp)


def describe(c, **params):
    req = models.DescribeDBInstancesRequest()
    req._deserialize(params)
    return c.DescribeDBInstances(req)


def fails(code, f):
    try:
        f()
    except TencentCloudSDKException as e:
        assert e.code == code, (e.code, e.message)
        assert e.requestId, "no request id"
        return e
    raise AssertionError(f"no {code}")


# Every form the clients send gets the same answer.
for method, sign in (("POST", None), ("GET", None), ("POST", "HmacSHA256"), ("GET", "HmacSHA1")):
    r = describe(client(method, sign))
    ids = sorted(d.InstanceId for d in r.InstanceDetails)
    assert r.TotalCount == 2 and ids == sorted([RS, SHARDED]), r.to_json_string()
    assert r.RequestId, r
    print(f"tencent {method} {sign or 'TC3'}: DescribeDBInstances ok")

# Filters and the instance's shape.
r = describe(client(), InstanceIds=[SHARDED])
[d] = r.InstanceDetails
assert d.ClusterType == 1 and d.Status == 2 and d.MongoVersion.startswith("MONGO_8"), d.to_json_string()
assert [s.ReplicaSetId for s in d.ReplicaSets] == [f"{SHARDED}_0", f"{SHARDED}_1"], d.to_json_string()
r = describe(client("GET"), ClusterType=0)
assert [d.InstanceId for d in r.InstanceDetails] == [RS], r.to_json_string()
assert [s.ReplicaSetId for s in r.InstanceDetails[0].ReplicaSets] == [f"{RS}_0"]
r = describe(client(), Limit=1, Offset=1)
assert r.TotalCount == 2 and len(r.InstanceDetails) == 1, r.to_json_string()

# Errors, each through the SDK's exception.
fails("AuthFailure.SignatureFailure", lambda: describe(client(secret="wrong")))
fails("AuthFailure.SignatureFailure", lambda: describe(client("POST", "HmacSHA256", secret="wrong")))
fails("AuthFailure.SecretIdNotFound", lambda: describe(client(ak="STWKNOSUCHKEY0000000")))
fails("InvalidParameterValue", lambda: describe(client(), Limit=1000))
fails("InvalidParameterValue", lambda: describe(client("GET"), Limit="many"))
fails("InvalidAction", lambda: client().call_json("NoSuchAction", {}))
e = fails("UnknownParameter", lambda: client().call_json("DescribeDBInstances", {"Nope": 1}))
assert "Nope" in e.message, e.message
print("all tencent SDK checks passed")
