// The real node's sandbox (pause) process: standard library only.
module modeldeploy.io/hack/pause

go 1.26
