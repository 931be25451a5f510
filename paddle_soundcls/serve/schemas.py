"""The shapes of the server's answers and request bodies, for the OpenAPI docs at /docs."""
from typing import Dict, List, Optional

from pydantic import BaseModel, Field

# Response schemas: they document the answers in the OpenAPI docs.

class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str = Field(description='registry name of the served model')
    duration: float = Field(description='seconds of audio in the request')
    results: List[LabelScore] = Field(description='the best top_k labels, best first')


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: List[str]
    sample_rate: int
    frontend: Dict
    precision: str
    min_seconds: float
    max_audio_seconds: float
    windows: Dict = Field(description='what stream and /v1/events windows may be: min_window, max_window, min_hop '
                                      '(seconds), max_overlap (window / hop)')


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PaddleSpeechRequest(BaseModel):
    """PaddleSpeech's CLS request."""
    audio: str = Field(description='base64 of a WAV (or FLAC / OGG) file')
    topk: int = 1


class PaddleSpeechMessage(BaseModel):
    description: str


class PaddleSpeechResult(BaseModel):
    class_name: str
    prob: float


class PaddleSpeechResults(BaseModel):
    topk: int
    results: List[PaddleSpeechResult]


class PaddleSpeechResponse(BaseModel):
    success: bool
    code: int
    message: PaddleSpeechMessage
    result: Optional[PaddleSpeechResults] = None


ERROR_RESPONSES = {status: {'model': ErrorResponse, 'description': text} for status, text in (
    (400, 'malformed request'), (401, 'missing or wrong API key'), (408, 'body not received in time'),
    (413, 'body or audio too long'), (415, 'unsupported Content-Type'), (422, 'audio not usable'),
    (503, 'queue full: retry after Retry-After seconds'), (504, 'no answer within --timeout'))}


def audio_request(parameters):
    """The OpenAPI request of an endpoint that takes audio in every form and `parameters` (names of
    params.PARAMETERS), each in the query string, as a multipart field or in JSON "parameters"."""
    from .params import PARAMETERS
    schemas = {name: {'type': PARAMETERS[name].kind, 'description': PARAMETERS[name].text} for name in parameters}
    binary = {'schema': {'type': 'string', 'format': 'binary'}}
    return {
        'parameters': [{'name': name, 'in': 'query', 'required': False, 'schema': schema}
                       for name, schema in schemas.items()],
        'requestBody': {'required': True, 'content': {
            'audio/*': binary, 'application/octet-stream': binary,
            'multipart/form-data': {'schema': {'type': 'object', 'required': ['file'], 'properties': {
                'file': {'type': 'string', 'format': 'binary'}, **schemas}}},
            'application/json': {'schema': {'type': 'object', 'required': ['inputs'], 'properties': {
                'inputs': {'type': 'string', 'description': 'base64 of the audio file'},
                'parameters': {'type': 'object', 'properties': schemas}}}}}}}
